// Distributed data parallelism on libtorch's own c10d: a TCPStore rendezvous and a Gloo (CPU)
// or NCCL (CUDA, libtorch >= 2) process group, with the collectives the trainer needs. The only
// translation unit that includes c10d headers.
//
// Feature macros:
//   - USE_C10D_GLOO / USE_C10D_NCCL: the c10d backend headers are empty unless they are
//     defined (CMake consumers get them from Caffe2Targets; we define them here when the
//     backend's own headers are present);
//   - DD_NO_DIST: the libtorch was built without distributed support (setup found no c10d
//     symbols): every call then reports that, and no c10d header is included.
//
// Every collective runs synchronously on the calling thread (work->wait()), so a failure lands
// in this thread's error slot; Gloo's worker thread does the network I/O meanwhile. Gloo's
// Options.timeout is also its per-operation I/O timeout: it is what turns a stuck peer into an
// error (a dead peer shows up at once as a closed connection).
#include <torch/version.h>

#if !defined(DD_NO_DIST)
#if __has_include(<gloo/algorithm.h>)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#define DD_HAVE_GLOO 1
#endif
#if defined(DD_WITH_CUDA) && TORCH_VERSION_MAJOR >= 2 && __has_include(<nccl.h>)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif
#define DD_HAVE_NCCL 1
#endif
#endif

#include "common.h"

#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>

#if !defined(DD_NO_DIST)
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
#ifdef DD_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef DD_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

using dd::get;

namespace {

#if defined(DD_NO_DIST)

[[noreturn]] void no_dist() {
  throw std::runtime_error(
      "this shim was built against a libtorch without distributed support (no c10d in "
      "libtorch_cpu); use a libtorch built with USE_DISTRIBUTED=1 (Debian's libtorch-dev, or a "
      "PyTorch install via LIBTORCH / TORCH_DIR) and run `deno task setup` again");
}

#else

const char* backend_name(int32_t b) { return b == DD_NCCL ? "nccl" : "gloo"; }

#if TORCH_VERSION_MAJOR >= 2
using DdGroup = c10d::Backend;  // ProcessGroupGloo / ProcessGroupNCCL derive from Backend in 2.x
#else
using DdGroup = c10d::ProcessGroup;  // ... and from ProcessGroup in 1.13
#endif

// One process group with its rendezvous store. `broken` is set by the first failed collective:
// the group's state is undefined afterwards, so every later call fails at once with that error.
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<DdGroup> pg;
  int32_t rank = 0, world = 1, backend = DD_GLOO;
  int64_t timeout_ms = 0;
  bool broken = false;
  std::string first_error;
  // flat buffers reused across calls, keyed by (dtype, device): no allocation per step
  std::map<std::pair<int, std::string>, at::Tensor> flats;
#ifdef DD_HAVE_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
};

std::mutex table_mutex;
std::map<uint32_t, std::shared_ptr<Group>> table;
uint32_t next_id = 1;

std::shared_ptr<Group> group(uint32_t g) {
  std::lock_guard<std::mutex> lock(table_mutex);
  auto it = table.find(g);
  if (it == table.end())
    throw std::invalid_argument("process group handle " + std::to_string(g) +
                                " is not live (never created, or already destroyed)");
  return it->second;
}

std::string describe(const Group& g) {
  return "rank " + std::to_string(g.rank) + " of " + std::to_string(g.world) + ", " +
         backend_name(g.backend) + ", timeout " + std::to_string(g.timeout_ms) + " ms";
}

std::string message_of(const std::exception& e) {
  if (auto c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

// Runs one collective (fn returns its Work) and waits for it; a failure breaks the group.
template <typename F>
void collective(Group& g, const char* what, F&& fn) {
  if (g.broken)
    throw std::runtime_error(std::string(what) + " on a broken process group (" + describe(g) +
                             "): an earlier collective failed: " + g.first_error);
  try {
    c10::intrusive_ptr<c10d::Work> w = fn();
    w->wait();
  } catch (const std::exception& e) {
    g.broken = true;
    g.first_error = message_of(e);
    throw std::runtime_error(std::string(what) + " failed (" + describe(g) + "): " +
                             g.first_error);
  }
}

c10d::ReduceOp reduce_op(int32_t op) {
  switch (op) {
    case DD_RED_SUM:
    case DD_RED_AVG:  // Gloo has no AVG: SUM, then / world (the same numerics on NCCL)
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case DD_RED_PRODUCT:
      return c10d::ReduceOp(c10d::ReduceOp::PRODUCT);
    case DD_RED_MIN:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    case DD_RED_MAX:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op) +
                                  " (expected sum 0, avg 1, product 2, min 3, max 4)");
  }
}

// A buffer of at least `numel` elements of t's dtype and device, reused across calls.
at::Tensor flat_buffer(Group& g, const at::Tensor& like, int64_t numel) {
  auto key = std::make_pair(static_cast<int>(like.scalar_type()), like.device().str());
  auto& buf = g.flats[key];
  if (!buf.defined() || buf.numel() < numel)
    buf = at::empty({numel}, like.options().layout(at::kStrided));
  return buf.narrow(0, 0, numel);
}

// Packs the tensors into contiguous flat buckets of at most `bucket_bytes` (grouped by dtype and
// device, in the given order; a tensor larger than the cap gets a bucket of its own) and runs
// `reduce(flat)` on each. `src(i)` is what is packed (an undefined tensor packs zeros); after
// the collective `dst(i, view)` receives the result.
template <typename Src, typename Dst, typename Reduce>
void bucketed(Group& g, const std::vector<at::Tensor>& like, int64_t bucket_bytes, Src&& src,
              Dst&& dst, Reduce&& reduce) {
  if (bucket_bytes <= 0) bucket_bytes = int64_t(25) << 20;
  std::vector<bool> done(like.size(), false);
  for (size_t first = 0; first < like.size(); first++) {
    if (done[first]) continue;
    const auto& ref = like[first];
    int64_t cap = std::max<int64_t>(1, bucket_bytes / ref.element_size());
    // this bucket: the next tensors of the same dtype and device while they fit
    std::vector<size_t> members;
    int64_t total = 0;
    for (size_t i = first; i < like.size(); i++) {
      if (done[i] || like[i].scalar_type() != ref.scalar_type() ||
          like[i].device() != ref.device())
        continue;
      int64_t n = like[i].numel();
      if (!members.empty() && total + n > cap) break;
      members.push_back(i);
      done[i] = true;
      total += n;
    }
    at::Tensor flat = flat_buffer(g, ref, total);
    int64_t off = 0;
    for (size_t i : members) {
      int64_t n = like[i].numel();
      at::Tensor part = flat.narrow(0, off, n);
      const at::Tensor s = src(i);
      if (s.defined())
        part.copy_(s.reshape(-1));
      else
        part.zero_();
      off += n;
    }
    reduce(flat);
    off = 0;
    for (size_t i : members) {
      int64_t n = like[i].numel();
      dst(i, flat.narrow(0, off, n).view(like[i].sizes()));
      off += n;
    }
  }
}

void allreduce_flat(Group& g, at::Tensor& flat, int32_t op, const char* what) {
  std::vector<at::Tensor> v{flat};
  c10d::AllreduceOptions o;
  o.reduceOp = reduce_op(op);
  collective(g, what, [&] { return g.pg->allreduce(v, o); });
  if (op == DD_RED_AVG) flat.div_(g.world);
}

void check_list(const dd_tensor* ts, int32_t n) {
  if (n < 0) throw std::invalid_argument("negative list length");
  if (n > 0 && ts == nullptr) throw std::invalid_argument("null tensor list");
}

void check_dense(const at::Tensor& t, const char* what, int32_t i) {
  if (t.layout() != at::kStrided)
    throw std::invalid_argument(std::string(what) + ": tensor " + std::to_string(i) +
                                " is not dense (strided)");
}

// The tensors of a handle list, detached, each checked to be dense.
std::vector<at::Tensor> dense_list(const dd_tensor* ts, int32_t n, const char* what) {
  check_list(ts, n);
  std::vector<at::Tensor> list;
  for (int32_t i = 0; i < n; i++) {
    auto t = get(ts[i]).detach();
    check_dense(t, what, i);
    list.push_back(t);
  }
  return list;
}

// Runs an in-place collective `run(flat)` over the tensors of `list`: on the tensor itself when
// it is one contiguous tensor, else through flat buckets, `dst(i, view)` taking each result.
template <typename Dst, typename Run>
void in_place(Group& g, std::vector<at::Tensor>& list, int64_t bucket_bytes, Dst&& dst,
              Run&& run) {
  if (list.size() == 1 && list[0].is_contiguous()) {
    run(list[0]);
    return;
  }
  bucketed(g, list, bucket_bytes, [&](size_t i) { return list[i]; }, dst, run);
}

#endif  // DD_NO_DIST

}  // namespace

extern "C" {

int32_t dd_dist_available(int32_t backend) {
#if defined(DD_NO_DIST)
  return 0;
#else
  if (backend == DD_GLOO) {
#ifdef DD_HAVE_GLOO
    return 1;
#else
    return 0;
#endif
  }
  if (backend == DD_NCCL) {
#ifdef DD_HAVE_NCCL
    return 1;
#else
    return 0;
#endif
  }
  return 0;
#endif
}

dd_group dd_dist_init(int32_t rank, int32_t world, const char* master_addr, int32_t port,
                      int64_t timeout_ms, int32_t backend, int32_t device_index) {
  try {
#if defined(DD_NO_DIST)
    no_dist();
#else
    if (world < 1) throw std::invalid_argument("world size must be >= 1, got " +
                                               std::to_string(world));
    if (rank < 0 || rank >= world)
      throw std::invalid_argument("rank " + std::to_string(rank) + " is outside 0.." +
                                  std::to_string(world - 1) + " (world size " +
                                  std::to_string(world) + ")");
    if (port < 1 || port > 65535)
      throw std::invalid_argument("master port must be in 1..65535, got " + std::to_string(port));
    if (timeout_ms <= 0)
      throw std::invalid_argument("timeout must be > 0 ms, got " + std::to_string(timeout_ms));
    if (master_addr == nullptr || *master_addr == 0)
      throw std::invalid_argument("master address is empty");
    if (backend != DD_GLOO && backend != DD_NCCL)
      throw std::invalid_argument("unknown backend " + std::to_string(backend) +
                                  " (gloo 0, nccl 1)");
#ifndef DD_HAVE_GLOO
    if (backend == DD_GLOO)
      throw std::runtime_error(
          "this shim was built without Gloo (the gloo headers were not found at build time): "
          "install them (Debian: apt-get install libgloo-dev, or let `deno task setup` fetch "
          "them into its cache) and run `deno task setup` again");
#endif
#ifndef DD_HAVE_NCCL
    if (backend == DD_NCCL)
      throw std::runtime_error(
          "this shim was built without NCCL: it needs a CUDA libtorch >= 2.0 and nccl.h at build "
          "time (e.g. the nvidia-nccl pip package beside PyTorch, or CUDA_HOME/include); "
          "rebuild with `deno task setup`, or use the gloo backend");
#endif
    auto rec = std::make_shared<Group>();
    rec->rank = rank;
    rec->world = world;
    rec->backend = backend;
    rec->timeout_ms = timeout_ms;
    const std::string addr(master_addr);
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    const std::string where = "rendezvous at " + addr + ":" + std::to_string(port) + " (rank " +
                              std::to_string(rank) + " of " + std::to_string(world) +
                              ", timeout " + std::to_string(timeout_ms) + " ms)";
    try {
      c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(port);
      so.isServer = rank == 0;
      so.numWorkers = static_cast<size_t>(world);
      so.waitWorkers = true;  // rank 0 returns once every rank connected (or throws on timeout)
      so.timeout = timeout;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
      // the classic socket server, not the libuv one that 2.4+ picks by default: inside a Deno
      // process the libuv server crashed (SIGSEGV in uv_listen, libtorch 2.11, measured)
      so.useLibUV = false;
#endif
      rec->store = c10::make_intrusive<c10d::TCPStore>(addr, so);
      // sanity checks through the store: distinct ranks, one world size
      if (rec->store->add("dd/rank/" + std::to_string(rank), 1) != 1)
        throw std::runtime_error("RANK " + std::to_string(rank) +
                                 " was started twice: each process needs its own RANK");
      const std::string w = std::to_string(world);
      if (rank == 0) {
        rec->store->set("dd/world", std::vector<uint8_t>(w.begin(), w.end()));
      } else {
        auto v = rec->store->get("dd/world");
        std::string w0(v.begin(), v.end());
        if (w0 != w)
          throw std::runtime_error("WORLD_SIZE differs between ranks (rank 0: " + w0 +
                                   ", this rank: " + w + ")");
      }
    } catch (const std::exception& e) {
      throw std::runtime_error(where + " failed: " + message_of(e));
    }
    try {
      if (backend == DD_GLOO) {
#ifdef DD_HAVE_GLOO
        auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
        // GLOO_SOCKET_IFNAME (as in PyTorch): one device per named interface; a loopback master
        // binds loopback; otherwise the address this host's name resolves to
        const char* ifnames = std::getenv("GLOO_SOCKET_IFNAME");
        if (ifnames != nullptr && *ifnames != 0) {
          std::string s(ifnames);
          size_t start = 0;
          while (start <= s.size()) {
            size_t end = s.find(',', start);
            if (end == std::string::npos) end = s.size();
            std::string name = s.substr(start, end - start);
            if (!name.empty())
              opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
            start = end + 1;
          }
        } else if (addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1") {
          opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
        } else {
          opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        }
        opts->threads = 1;  // collectives run one at a time, synchronously
        rec->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(rec->store, rank, world, opts);
#endif
      } else {
#ifdef DD_HAVE_NCCL
        c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
        // blocking wait: wait() then blocks the host and throws on timeout, instead of the
        // watchdog aborting the process (an explicit setting in the environment wins)
        setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
        auto opts = c10d::ProcessGroupNCCL::Options::create();
        opts->timeout = timeout;
        rec->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(rec->store, rank, world, opts);
        rec->pg = rec->nccl;
#endif
      }
    } catch (const std::exception& e) {
      // Gloo's full-mesh connect goes through the store: a missing rank shows up here
      throw std::runtime_error(where + " failed while creating the " +
                               std::string(backend_name(backend)) +
                               " process group: " + message_of(e));
    }
    std::lock_guard<std::mutex> lock(table_mutex);
    uint32_t id = next_id++;
    table[id] = rec;
    return id;
#endif
  }
  DD_CATCH(0u)
}

int32_t dd_dist_destroy(dd_group g) {
  DD_STATUS({
#if defined(DD_NO_DIST)
    no_dist();
#else
    std::shared_ptr<Group> rec;
    {
      std::lock_guard<std::mutex> lock(table_mutex);
      auto it = table.find(g);
      if (it == table.end())
        throw std::invalid_argument("process group handle " + std::to_string(g) +
                                    " is not live (never created, or already destroyed)");
      rec = it->second;
      table.erase(it);
    }
#ifdef DD_HAVE_NCCL
    if (rec->nccl) rec->nccl->shutdown();
    rec->nccl.reset();
#endif
    rec->flats.clear();
    rec->pg.reset();  // the group first (it holds the store), then the store
    rec->store.reset();
    return 0;
#endif
  })
}

int32_t dd_dist_info(dd_group g, int32_t* out) {
  DD_STATUS({
#if defined(DD_NO_DIST)
    no_dist();
#else
    auto rec = group(g);
    out[0] = rec->rank;
    out[1] = rec->world;
    out[2] = rec->backend;
    out[3] = rec->broken ? 1 : 0;
    return 0;
#endif
  })
}

int32_t dd_dist_allreduce(dd_group g, const dd_tensor* ts, int32_t n, int32_t op,
                          int64_t bucket_bytes) {
  DD_STATUS({
#if defined(DD_NO_DIST)
    no_dist();
#else
    auto rec = group(g);
    check_list(ts, n);
    reduce_op(op);  // validates op before any collective
    c10::NoGradGuard no_grad;
    auto list = dense_list(ts, n, "all_reduce");
    for (size_t i = 0; i < list.size(); i++) {
      if (op == DD_RED_AVG && !at::isFloatingType(list[i].scalar_type()))
        throw std::invalid_argument("all_reduce avg: tensor " + std::to_string(i) + " is " +
                                    c10::toString(list[i].scalar_type()) +
                                    ", not a floating-point tensor (use sum)");
    }
    in_place(
        *rec, list, bucket_bytes, [&](size_t i, const at::Tensor& v) { list[i].copy_(v); },
        [&](at::Tensor& flat) { allreduce_flat(*rec, flat, op, "all_reduce"); });
    return 0;
#endif
  })
}

int32_t dd_dist_allreduce_grads(dd_group g, const dd_tensor* params, int32_t n, int32_t average,
                                int64_t bucket_bytes) {
  DD_STATUS({
#if defined(DD_NO_DIST)
    no_dist();
#else
    auto rec = group(g);
    check_list(params, n);
    c10::NoGradGuard no_grad;
    std::vector<at::Tensor> ps;
    for (int32_t i = 0; i < n; i++) {
      auto& p = get(params[i]);
      check_dense(p, "all_reduce_grads", i);
      ps.push_back(p);
    }
    if (n == 0) return 0;
    // which gradients exist anywhere: a parameter without gradient on this rank contributes
    // zeros, and ends with a gradient iff some rank had one (then AdamW updates it everywhere)
    at::Tensor flags = at::empty({n}, at::kFloat);
    auto fa = flags.accessor<float, 1>();
    for (int32_t i = 0; i < n; i++) fa[i] = ps[i].grad().defined() ? 1.f : 0.f;
    if (flags.device() != ps[0].device()) flags = flags.to(ps[0].device());
    allreduce_flat(*rec, flags, DD_RED_MAX, "all_reduce (gradient flags)");
    at::Tensor any = flags.to(at::kCPU);
    auto aa = any.accessor<float, 1>();
    std::vector<at::Tensor> like;
    std::vector<size_t> index;  // positions (in ps) of the gradients reduced
    for (int32_t i = 0; i < n; i++) {
      if (aa[i] > 0.f) {
        like.push_back(ps[i]);
        index.push_back(i);
      }
    }
    const int32_t op = average ? DD_RED_AVG : DD_RED_SUM;
    bucketed(
        *rec, like, bucket_bytes, [&](size_t k) { return ps[index[k]].grad(); },
        [&](size_t k, const at::Tensor& v) {
          auto& p = ps[index[k]];
          if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
          p.mutable_grad().copy_(v);
        },
        [&](at::Tensor& flat) { allreduce_flat(*rec, flat, op, "all_reduce (gradients)"); });
    return 0;
#endif
  })
}

int32_t dd_dist_broadcast(dd_group g, const dd_tensor* ts, int32_t n, int32_t root,
                          int64_t bucket_bytes) {
  DD_STATUS({
#if defined(DD_NO_DIST)
    no_dist();
#else
    auto rec = group(g);
    check_list(ts, n);
    if (root < 0 || root >= rec->world)
      throw std::invalid_argument("broadcast root " + std::to_string(root) + " is outside 0.." +
                                  std::to_string(rec->world - 1));
    c10::NoGradGuard no_grad;
    auto list = dense_list(ts, n, "broadcast");
    c10d::BroadcastOptions o;
    o.rootRank = root;
    in_place(
        *rec, list, bucket_bytes,
        [&](size_t i, const at::Tensor& v) {
          if (rec->rank != root) list[i].copy_(v);
        },
        [&](at::Tensor& flat) {
          std::vector<at::Tensor> v{flat};
          collective(*rec, "broadcast", [&] { return rec->pg->broadcast(v, o); });
        });
    return 0;
#endif
  })
}

dd_tensor dd_dist_allgather(dd_group g, dd_tensor t) {
  DD_TENSOR({
#if defined(DD_NO_DIST)
    no_dist();
#else
    auto rec = group(g);
    c10::NoGradGuard no_grad;
    at::Tensor x = get(t).detach();
    check_dense(x, "all_gather", 0);
    x = x.contiguous();
    std::vector<at::Tensor> in{x};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int32_t r = 0; r < rec->world; r++) out[0].push_back(at::empty_like(x));
    collective(*rec, "all_gather", [&] { return rec->pg->allgather(out, in); });
    return dd::put(at::stack(out[0]));
#endif
  })
}

int32_t dd_dist_barrier(dd_group g) {
  DD_STATUS({
#if defined(DD_NO_DIST)
    no_dist();
#else
    auto rec = group(g);
    collective(*rec, "barrier", [&] { return rec->pg->barrier(); });
    return 0;
#endif
  })
}

}  // extern "C"
