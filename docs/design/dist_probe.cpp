// Probe: TCPStore + ProcessGroupGloo from C++ against Debian's libtorch (1.13) and the 2.x
// headers. Env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TIMEOUT_MS, MODE (ok|die|hang).
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/version.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <typeinfo>
#include <unistd.h>

#if TORCH_VERSION_MAJOR >= 2
using PG = c10d::Backend;  // ProcessGroupGloo derives from Backend in 2.x
#else
using PG = c10d::ProcessGroup;  // ... and from ProcessGroup in 1.13
#endif

static std::string env(const char* k, const char* d) {
  const char* v = std::getenv(k);
  return v ? v : d;
}

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Runs one collective synchronously: wait() rethrows the Work's exception.
static void run(const char* what, c10::intrusive_ptr<c10d::Work> w, int rank, double t0) {
  try {
    w->wait();
  } catch (const c10::Error& e) {
    std::printf("rank %d: %s failed after %.2fs: c10::Error (%s): %s\n", rank, what, now() - t0,
                typeid(e).name(), e.what_without_backtrace());
    std::fflush(stdout);
    std::_Exit(3);
  } catch (const std::exception& e) {
    std::printf("rank %d: %s failed after %.2fs: %s: %s\n", rank, what, now() - t0,
                typeid(e).name(), e.what());
    std::fflush(stdout);
    std::_Exit(3);
  }
}

int main() {
  int rank = std::stoi(env("RANK", "0"));
  int world = std::stoi(env("WORLD_SIZE", "1"));
  std::string addr = env("MASTER_ADDR", "127.0.0.1");
  int port = std::stoi(env("MASTER_PORT", "29511"));
  auto timeout = std::chrono::milliseconds(std::stoll(env("TIMEOUT_MS", "5000")));
  std::string mode = env("MODE", "ok");
  double t0 = now();

  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(port);
  so.isServer = rank == 0;
  so.numWorkers = world;
  so.waitWorkers = true;
  so.timeout = timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>(addr, so);

  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
  opts->threads = 1;
  c10::intrusive_ptr<PG> pg =
      c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
  std::printf("rank %d/%d: group up in %.2fs (torch %s)\n", rank, world, now() - t0,
              TORCH_VERSION);

  // all_reduce (sum) of a flat buffer made from two "gradients"
  at::Tensor g1 = at::full({3}, 1.0f + rank), g2 = at::full({2, 2}, 10.0f * (rank + 1));
  at::Tensor flat = at::cat({g1.reshape(-1), g2.reshape(-1)});
  std::vector<at::Tensor> v{flat};
  c10d::AllreduceOptions ao;
  ao.reduceOp = c10d::ReduceOp::SUM;
  run("allreduce", pg->allreduce(v, ao), rank, t0);
  std::printf("rank %d: allreduce -> [%g %g %g | %g ...]\n", rank, flat[0].item<float>(),
              flat[1].item<float>(), flat[2].item<float>(), flat[3].item<float>());

  // broadcast from rank 0
  at::Tensor b = at::full({4}, (double)(rank + 7));
  std::vector<at::Tensor> bv{b};
  c10d::BroadcastOptions bo;
  bo.rootRank = 0;
  run("broadcast", pg->broadcast(bv, bo), rank, t0);
  std::printf("rank %d: broadcast -> %g\n", rank, b[0].item<float>());

  // all_gather: one output list per input tensor
  at::Tensor mine = at::full({2}, (double)rank);
  std::vector<at::Tensor> in{mine};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world; r++) out[0].push_back(at::empty({2}));
  run("allgather", pg->allgather(out, in), rank, t0);
  std::printf("rank %d: allgather -> [%g, %g]\n", rank, out[0][0][0].item<float>(),
              out[0][world - 1][0].item<float>());

  run("barrier", pg->barrier(), rank, t0);
  std::printf("rank %d: barrier ok\n", rank);
  std::fflush(stdout);

  if (mode != "ok" && rank == 1) {
    if (mode == "die") std::_Exit(9);  // as if killed: sockets close without a goodbye
    std::this_thread::sleep_for(std::chrono::seconds(60));  // hang: alive, not participating
  }
  if (mode != "ok") {
    double t1 = now();
    std::vector<at::Tensor> v2{at::ones({8})};
    try {
      pg->allreduce(v2)->wait();
      std::printf("rank %d: unexpected success\n", rank);
    } catch (const c10::Error& e) {
      std::printf("rank %d: after peer %s: allreduce threw c10::Error [%s] after %.2fs: %s\n",
                  rank, mode.c_str(), typeid(e).name(), now() - t1, e.what_without_backtrace());
    } catch (const std::exception& e) {
      std::printf("rank %d: after peer %s: allreduce threw [%s] after %.2fs: %s\n", rank,
                  mode.c_str(), typeid(e).name(), now() - t1, e.what());
    }
    std::fflush(stdout);
    double t2 = now();
    pg.reset();
    store.reset();
    std::printf("rank %d: destroyed group after failure in %.2fs\n", rank, now() - t2);
    std::fflush(stdout);
    std::_Exit(4);
  }
  pg.reset();
  store.reset();
  std::printf("rank %d: clean shutdown at %.2fs\n", rank, now() - t0);
  return 0;
}
