"""PyTorch comparator for bench/vit_step.ts: one DenseDINO training step of a ViT in eager PyTorch.

Written for this project from the DenseDINO paper and the description of the official code's
computation (it is not the official code): the same model and step as bench/vit_step.ts, in the
way the official PyTorch code computes them.

Workload (defaults; the flags must match bench/vit_step.ts, which bench/run.ts sees to):
  - vit_tiny (192 wide, 12 blocks, 3 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6),
    patch 16, positional grid trained at 224 px (14x14) and interpolated bicubically for the
    96-px views (scale factor (6 + 0.1) / 14, as the official interpolate_pos_encoding);
  - batch 16; 2 global + 2 local views, all 96x96; M = 4 reference points per (teacher view i,
    view j) pair: a teacher (global) view carries 4 * M = 16 reference tokens, a student view
    2 * M = 8; a reference token's embedding is zeros plus the trained 14x14 patch positional
    grid sampled bicubically at its point (grid_sample, align_corners False);
  - the explicit attention of the official code: tokens [cls, refs, patches] and an additive
    -inf mask for all2pos_pos2cls_eye (nobody attends to a reference token, a reference token
    attends to the patches and to itself), added to every block's attention logits;
  - teacher: a second ViT plus heads (the EMA copy, no drop path, parameters frozen), forward
    under no_grad on the 2 global views batched together ([32, 3, 96, 96], points [32, 16, 2]);
  - student: drop path 0.1 (the DINO default), forward on all 4 views batched together
    ([64, 3, 96, 96], points [64, 8, 2]);
  - heads: DINOHead(192, 4096) (3-layer MLP, hidden 2048, bottleneck 256, GELU, L2
    normalisation, weight-normalised last layer with its gain frozen at 1) for the class token
    and a separate one for the reference tokens, on student and teacher outputs.

Variants (each timed in its own phase; ms per call, the graph and outputs freed in the call):
  forward  teacher forward (no_grad) + student forward with autograd recording; backbones only
  fwd_bwd  forward, then backward of student cls.sum() + ref.sum(); grads set to None each time
  step     the full step: teacher and student forward with heads, the stand-in loss, zero_grad,
           backward, per-parameter gradient clipping at 3.0 (as the official clip_gradients),
           AdamW (torch.optim.AdamW; lr 0.0005 * 16 / 256; weight decay 0.04 on parameters
           that are not biases and not 1-D, 0 on the rest), loss.item(), EMA of the teacher
           (momentum 0.996, the official per-parameter loop)

The stand-in loss (until the library's DINO loss exists, issue 5) has the DINO loss's shapes and
ops: teacher softmax((t - centre) / 0.04), student log_softmax(s / 0.1), cross-entropy over the
pairs (teacher global view iq, student view v != iq) -- class tokens on the global views only,
reference tokens on every view (the official defaults) -- total 0.5 * class + 0.5 * reference,
then the two centres' EMA (momentum 0.9; the reference centre from the global views' reference
tokens). No temperature schedule, no distributed all_reduce.

Prints progress on stderr and one JSON line (BenchReport in bench/common.ts) on stdout,
including each variant's peak RSS (VmHWM, reset before each variant's phase).
Run with Debian's python3-torch: /usr/bin/python3 bench/vit_step.py --help
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
from _common import (blas_info, loaded_libraries, peak_rss_mib, reset_peak_rss,  # noqa: E402
                     rss_mib, summarize)

VARIANTS = ("forward", "fwd_bwd", "step")
ARCHS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_mini": (128, 4, 4)}


def trunc_normal(t, std=0.02):
    with torch.no_grad():
        return nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)  # bounds absolute, as DINO's


def init_linear(m):
    trunc_normal(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)
    return m


def drop_path(x, p, training):
    """Per-sample stochastic depth: x / (1 - p) * floor(1 - p + U[0, 1))."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    r = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype,
                           device=x.device)).floor_()
    return x.div(keep) * r


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = init_linear(nn.Linear(dim, 3 * dim))
        self.proj = init_linear(nn.Linear(dim, dim))

    def forward(self, x, mask):
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:
            logits = logits + mask
        w = logits.softmax(dim=-1)
        return self.proj((w @ v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim, heads, dp):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(init_linear(nn.Linear(dim, 4 * dim)), nn.GELU(),
                                 init_linear(nn.Linear(4 * dim, dim)))
        self.dp = dp

    def forward(self, x, mask):
        x = x + drop_path(self.attn(self.norm1(x), mask), self.dp, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.dp, self.training)


class ViT(nn.Module):
    def __init__(self, dim, depth, heads, patch=16, img=224, drop_path_rate=0.0):
        super().__init__()
        self.dim, self.patch, self.grid = dim, patch, img // patch
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(trunc_normal(torch.zeros(1, 1, dim)))
        self.cls_pos_embed = nn.Parameter(trunc_normal(torch.zeros(1, 1, dim)))
        self.patch_pos_embed = nn.Parameter(trunc_normal(torch.zeros(1, self.grid ** 2, dim)))
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([Block(dim, heads, r) for r in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def pos_grid(self):
        g, d = self.grid, self.dim
        return self.patch_pos_embed.reshape(1, g, g, d).permute(0, 3, 1, 2)  # [1, D, G, G]

    def patch_pos(self, h, w):
        """The trained grid bicubically resized to the view's (h/p) x (w/p) patches (+0.1)."""
        hp, wp = h // self.patch, w // self.patch
        if hp * wp == self.grid ** 2 and h == w:
            return self.patch_pos_embed
        out = F.interpolate(self.pos_grid(), mode="bicubic",
                            scale_factor=((hp + 0.1) / self.grid, (wp + 0.1) / self.grid))
        assert out.shape[-2:] == (hp, wp)
        return out.permute(0, 2, 3, 1).reshape(1, hp * wp, self.dim)

    def ref_pos(self, points):
        """Reference positional embeddings [B, K, D]: the trained grid sampled at the points."""
        b, k, _ = points.shape
        grid = self.pos_grid().expand(b, -1, -1, -1)
        s = F.grid_sample(grid, points.reshape(b, 1, k, 2), mode="bicubic", align_corners=False)
        return s.flatten(2).transpose(1, 2)

    @staticmethod
    def mask(t, k, device=None):
        """Additive all2pos_pos2cls_eye mask over [cls, k refs, patches] ([t, t])."""
        m = torch.zeros(t, t, device=device)
        m[:, 1:1 + k] = -math.inf  # nothing attends to a reference token ...
        m[1:1 + k, 0] = -math.inf  # ... reference tokens do not see the class token ...
        m.fill_diagonal_(0.0)  # ... but every token sees itself
        return m

    def forward(self, x, points):
        b, _, h, w = x.shape
        k = points.shape[1]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        if k == 0:  # DINO: no reference tokens, no mask
            seq = torch.cat((self.cls_token.expand(b, -1, -1), patches), dim=1)
            seq = seq + torch.cat((self.cls_pos_embed.expand(b, -1, -1),
                                   self.patch_pos(h, w).expand(b, -1, -1)), dim=1)
            for blk in self.blocks:
                seq = blk(seq, None)
            return self.norm(seq)[:, :1], None
        refs = torch.zeros(1, k, self.dim, device=x.device).expand(b, -1, -1)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), refs, patches), dim=1)
        pos = torch.cat((self.cls_pos_embed.expand(b, -1, -1), self.ref_pos(points),
                         self.patch_pos(h, w).expand(b, -1, -1)), dim=1)
        seq = tokens + pos
        mask = self.mask(seq.shape[1], k, x.device)
        for blk in self.blocks:
            seq = blk(seq, mask)
        seq = self.norm(seq)
        return seq[:, :1], seq[:, 1:1 + k]  # class [B, 1, D], references [B, K, D]


class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, hidden=2048, bottleneck=256):
        super().__init__()
        self.mlp = nn.Sequential(init_linear(nn.Linear(in_dim, hidden)), nn.GELU(),
                                 init_linear(nn.Linear(hidden, hidden)), nn.GELU(),
                                 init_linear(nn.Linear(hidden, bottleneck)))
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1.0)
        self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class Model(nn.Module):
    """Backbone + class head + reference head (the official MultiCropWrapper's outputs)."""

    def __init__(self, arch, patch, img, out_dim, drop_path_rate, hidden=2048, bottleneck=256):
        super().__init__()
        dim, depth, heads = ARCHS[arch]
        self.backbone = ViT(dim, depth, heads, patch, img, drop_path_rate)
        self.head = DINOHead(dim, out_dim, hidden, bottleneck)
        self.ref_head = DINOHead(dim, out_dim, hidden, bottleneck)

    def forward(self, x, points):
        cls, ref = self.backbone(x, points)
        return self.head(cls), self.ref_head(ref)


def stand_in_loss(s_cls, s_ref, t_cls, t_ref, centre, ref_centre, ncrops, m):
    """The stand-in DINO loss (see the module doc); updates the centres in place."""
    s_cls = (s_cls / 0.1).squeeze(1).chunk(ncrops)  # ncrops x [B, O]
    s_ref = (s_ref / 0.1).unflatten(1, (2, m)).chunk(ncrops)  # ncrops x [B, 2, M, O]
    t_cls_p = F.softmax((t_cls.squeeze(1) - centre) / 0.04, dim=-1).detach().chunk(2)
    t_ref_u = t_ref.unflatten(1, (ncrops, m))  # [2B, ncrops, M, O]
    t_ref_p = F.softmax((t_ref_u - ref_centre) / 0.04, dim=-1).detach().chunk(2)
    cls_loss, ref_loss, n_cls, n_ref = 0.0, 0.0, 0, 0
    for iq in range(2):
        for v in range(ncrops):
            if v == iq:
                continue
            if v < 2:
                cls_loss = cls_loss + torch.sum(
                    -t_cls_p[iq] * F.log_softmax(s_cls[v], dim=-1), dim=-1).mean()
                n_cls += 1
            ref_loss = ref_loss + torch.sum(
                -t_ref_p[iq][:, v] * F.log_softmax(s_ref[v][:, iq], dim=-1), dim=-1).mean()
            n_ref += 1
    loss = 0.5 * (cls_loss / n_cls) + 0.5 * (ref_loss / n_ref)
    with torch.no_grad():
        n = t_cls.shape[0]
        c = (torch.sum(t_cls, dim=0, keepdim=True) / n).mean(dim=1)
        centre.mul_(0.9).add_(c, alpha=0.1)
        g = t_ref_u[:, :2].flatten(1, 2)
        rc = (torch.sum(g, dim=0, keepdim=True) / n).mean(dim=1)
        ref_centre.mul_(0.9).add_(rc, alpha=0.1)
    return loss


def param_groups(model):
    """Weight decay on parameters that are not biases and not 1-D (the official grouping)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_gradients(model, clip):
    """Each parameter's gradient clipped to norm <= clip separately (as DINO's)."""
    norms = []
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            norms.append(norm.item())
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
    return norms


class Bench:
    def __init__(self, a):
        torch.manual_seed(0)
        b, g, l, m = a.batch, 2, 2, a.points
        self.ncrops, self.m, self.b = g + l, m, b
        self.student = Model(a.arch, a.patch_size, a.img_size, a.out_dim, a.drop_path)
        self.teacher = Model(a.arch, a.patch_size, a.img_size, a.out_dim, 0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.student.train()
        self.teacher.train()  # as the official code: the teacher is never put in eval mode
        self.images = torch.randn(self.ncrops * b, 3, a.view_size, a.view_size)
        # points of pair (teacher view i, view j): pair[i][j] [B, M, 2] in [-1, 1]
        pair = [[torch.rand(b, m, 2) * 2 - 1 for _ in range(self.ncrops)] for _ in range(g)]
        self.t_points = torch.cat([torch.cat(pair[i], dim=1) for i in range(g)])  # [2B, 4M, 2]
        self.s_points = torch.cat(
            [torch.cat([pair[i][j] for i in range(g)], dim=1) for j in range(self.ncrops)])
        self.opt = torch.optim.AdamW(param_groups(self.student), lr=0.0005 * b / 256,
                                     weight_decay=0.04)
        self.centre = torch.zeros(1, a.out_dim)
        self.ref_centre = torch.zeros(1, a.out_dim)
        self.momentum = 0.996
        self.phases = None

    def forward(self):
        with torch.no_grad():
            t = self.teacher.backbone(self.images[:2 * self.b], self.t_points)
        s = self.student.backbone(self.images, self.s_points)
        del t, s

    def fwd_bwd(self):
        with torch.no_grad():
            t = self.teacher.backbone(self.images[:2 * self.b], self.t_points)
        cls, ref = self.student.backbone(self.images, self.s_points)
        (cls.sum() + ref.sum()).backward()
        self.student.zero_grad(set_to_none=True)
        del t, cls, ref

    def step(self):
        ph = self.phases
        if ph:
            ph.start()
        with torch.no_grad():
            t_cls, t_ref = self.teacher.backbone(self.images[:2 * self.b], self.t_points)
            if ph:
                ph.mark("teacher_backbone")
            t_cls, t_ref = self.teacher.head(t_cls), self.teacher.ref_head(t_ref)
            if ph:
                ph.mark("teacher_heads")
        s_cls, s_ref = self.student.backbone(self.images, self.s_points)
        if ph:
            ph.mark("student_backbone")
        s_cls, s_ref = self.student.head(s_cls), self.student.ref_head(s_ref)
        if ph:
            ph.mark("student_heads")
        loss = stand_in_loss(s_cls, s_ref, t_cls, t_ref, self.centre, self.ref_centre,
                             self.ncrops, self.m)
        if ph:
            ph.mark("loss")
        self.opt.zero_grad()
        if ph:
            ph.mark("zero_grad")
        loss.backward()
        if ph:
            ph.mark("backward")
        clip_gradients(self.student, 3.0)
        if ph:
            ph.mark("clip")
        self.opt.step()
        if ph:
            ph.mark("adamw")
        value = loss.item()
        with torch.no_grad():
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.data.mul_(self.momentum).add_((1 - self.momentum) * ps.detach().data)
        if ph:
            ph.mark("ema")
        del t_cls, t_ref, s_cls, s_ref, loss
        if ph:
            ph.mark("free")
        return value


class Phases:
    """Wall time per named phase of a call (profiling aid; the twin of Phases in vit_step.ts)."""

    def __init__(self):
        self.ms, self.t = {}, 0.0

    def start(self):
        self.t = time.perf_counter()

    def mark(self, name):
        t = time.perf_counter()
        self.ms.setdefault(name, []).append((t - self.t) * 1e3)
        self.t = t

    def medians(self):
        return {k: summarize(xs)["median"] for k, xs in self.ms.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed calls per variant (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--threads", default="auto",
                   help="torch intra-op threads; auto keeps the default (default auto)")
    p.add_argument("--variants", default="forward,step",
                   help="comma-separated subset of %s, each timed in its own phase "
                        "(default forward,step)" % ",".join(VARIANTS))
    p.add_argument("--arch", default="vit_tiny", choices=sorted(ARCHS))
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224, help="trained image side (default 224)")
    p.add_argument("--view-size", type=int, default=96, help="side of every view (default 96)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--points", type=int, default=4,
                   help="reference points per (teacher view, view) pair (default 4)")
    p.add_argument("--out-dim", type=int, default=4096)
    p.add_argument("--drop-path", type=float, default=0.1, help="student drop path (default 0.1)")
    p.add_argument("--phases", action="store_true",
                   help="time the phases of step (teacher backbone, heads, loss, backward, "
                        "clipping, AdamW, EMA, freeing) and report their medians")
    a = p.parse_args()
    variants = [v.strip() for v in a.variants.split(",")]
    for v in variants:
        if v not in VARIANTS:
            p.error("unknown variant %s" % v)
    if a.threads != "auto":
        torch.set_num_threads(int(a.threads))

    bench = Bench(a)
    samples, rss, start_rss, phases = {}, {}, {}, {}
    for v in variants:
        fn = getattr(bench, v)
        reset_peak_rss()
        start_rss[v] = rss_mib()
        bench.phases = Phases() if a.phases and v == "step" else None
        for _ in range(a.warmup):
            fn()
        if bench.phases:
            bench.phases.ms.clear()
        xs = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            fn()
            xs.append((time.perf_counter() - t0) * 1e3)
        samples[v] = xs
        rss[v] = peak_rss_mib()
        s = summarize(xs)
        print("[vit_step pytorch] %s: median %.1f ms (min %.1f, max %.1f, n %d), peak RSS %.0f MiB "
              "(%.0f at the start)" % (v, s["median"], s["min"], s["max"], s["n"], rss[v],
                                       start_rss[v]), file=sys.stderr)
        if bench.phases:
            phases[v] = bench.phases.medians()
            print("[vit_step pytorch] %s phases (median ms): %s" % (v, ", ".join(
                "%s %.1f" % kv for kv in phases[v].items())), file=sys.stderr)

    blas_threads, blas_config = blas_info()
    report = {
        "bench": "vit_step",
        "side": "pytorch",
        "unit": "ms",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "threads": {
            "intraOp": torch.get_num_threads(),
            "blas": blas_threads,
            "blasConfig": blas_config,
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                   "OMP_WAIT_POLICY")},
        },
        "libraries": loaded_libraries(),
        "params": {"arch": a.arch, "patchSize": a.patch_size, "imgSize": a.img_size,
                   "viewSize": a.view_size, "batch": a.batch, "points": a.points,
                   "outDim": a.out_dim, "dropPath": a.drop_path, "reps": a.reps,
                   "warmup": a.warmup, "attention": "explicit mask"},
        "samples": samples,
        "peakRssMiB": rss,
        "startRssMiB": start_rss,
        "primary": "step",
    }
    if a.phases:
        report["phasesMs"] = phases
    print(json.dumps(report))


if __name__ == "__main__":
    main()
