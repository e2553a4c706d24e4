"""PyTorch comparator for bench/train_step.ts: one DenseDINO (or DINO) training iteration as the
official training loop computes it, in eager PyTorch.

Written for this project from the DenseDINO paper and the description of the official code's
computation (it is not the official code). The model pieces (ViT with reference tokens and the
explicit additive mask, DINO heads, parameter groups, per-parameter clipping) are those of
bench/vit_step.py; this script adds what the real loop does around them:

  - views at two resolutions (G global views of --global-size, L local views of --local-size),
    each resolution group through the backbone separately, the heads once on the concatenated
    outputs (the official MultiCropWrapper);
  - the per-iteration schedules: lr (linear scaling by batch/256, linear warm-up, cosine to the
    minimum), weight decay (cosine 0.04 -> 0.4, on the first parameter group only) and teacher
    momentum (cosine 0.996 -> 1), written into the optimiser's groups each iteration;
  - the DINO loss with the DenseDINO reference loss of the official DINOLoss (teacher softmax of
    (t - centre) / tau_t, student log-softmax at 0.1, pairs of different views, the class loss on
    the global views only by default, the reference loss on every view; alpha 0.5), the teacher
    temperature of the current epoch, then both centres' EMA (momentum 0.9);
  - zero_grad, backward, per-parameter clipping at 3.0, the last-layer cancel while the epoch is
    below freeze_last_layer, AdamW, loss.item(), and the teacher EMA;
  - --method dino: no reference tokens, the class loss over every view.

The inputs are random tensors of the batch's shapes (data loading is not part of the timed step
on either side).

With --device cuda (the GPU comparator of bench/gpu/): the models, centres and mask live on the
GPU; the views and points start in pinned host memory and each step copies them with
non_blocking=True (the official loader's pin_memory); --amp fp16 (the default there, as the
official use_fp16) runs the forward passes and the loss under torch.autocast float16 with the
official GradScaler sequence (scale, backward, unscale_, per-parameter clipping, last-layer
cancel, step, update); --amp bf16 autocasts to bfloat16 without a scaler. loss.item() is read
right after the loss, before backward, where the official loop checks it is finite. Each timed
step ends with torch.cuda.synchronize(); the report adds the allocator's peak
(torch.cuda.max_memory_allocated over the timed steps). Prints progress on stderr and one JSON line (BenchReport in bench/common.ts) on
stdout. Run with Debian's python3-torch: /usr/bin/python3 bench/train_step.py --help
"""

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
from _common import (blas_info, loaded_libraries, peak_rss_mib, reset_peak_rss,  # noqa: E402
                     rss_mib, summarize)
from vit_step import ARCHS, Model, clip_gradients, param_groups  # noqa: E402


def cosine_schedule(base, final, epochs, per_epoch, warmup_epochs=0, start_warmup=0.0):
    """The official cosine_scheduler: linear warm-up, then cosine from base to final."""
    warm = warmup_epochs * per_epoch
    out = [start_warmup + (base - start_warmup) * i / max(warm - 1, 1) for i in range(warm)]
    n = epochs * per_epoch - warm
    out += [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    return out


class Loop:
    def __init__(self, a):
        torch.manual_seed(0)
        self.a = a
        self.dev = torch.device(a.device)
        cuda = self.dev.type == "cuda"
        amp = a.amp if a.amp != "auto" else ("fp16" if cuda else "none")
        self.amp = amp
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        host = (lambda t: t.pin_memory()) if cuda else (lambda t: t)
        self.g, self.l, self.b, self.m = a.global_crops, a.local_crops, a.batch, a.num_ref
        self.ncrops = self.g + self.l
        self.dense = a.method == "densedino"
        heads = (a.head_hidden_dim, a.head_bottleneck_dim)
        self.student = Model(a.arch, a.patch_size, a.img_size, a.out_dim, a.drop_path, *heads)
        self.teacher = Model(a.arch, a.patch_size, a.img_size, a.out_dim, 0.0, *heads)
        self.teacher.load_state_dict(self.student.state_dict())
        self.student.to(self.dev)
        self.teacher.to(self.dev)
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.student.train()
        self.teacher.train()
        b, g, m = self.b, self.g, self.m
        self.views = [host(torch.randn(b, 3, a.global_size, a.global_size)) for _ in range(g)] + \
                     [host(torch.randn(b, 3, a.local_size, a.local_size)) for _ in range(self.l)]
        pair = [[torch.rand(b, m, 2) * 2 - 1 for _ in range(self.ncrops)] for _ in range(g)]
        # per global view i: [B, (G+L)M, 2]; per view j: [B, GM, 2] (the official layouts)
        self.t_points = [host(torch.cat(pair[i], dim=1)) for i in range(g)]
        self.s_points = [host(torch.cat([pair[i][j] for i in range(g)], dim=1))
                         for j in range(self.ncrops)]
        self.opt = torch.optim.AdamW(param_groups(self.student))
        per_epoch, epochs = a.iters_per_epoch, a.epochs
        self.lr = cosine_schedule(a.lr * b / 256, 1e-6, epochs, per_epoch, a.warmup_epochs)
        self.wd = cosine_schedule(0.04, 0.4, epochs, per_epoch)
        self.mom = cosine_schedule(0.996, 1.0, epochs, per_epoch)
        self.temp = 0.04
        self.centre = torch.zeros(1, a.out_dim, device=self.dev)
        self.ref_centre = torch.zeros(1, a.out_dim, device=self.dev)
        self.it = a.iteration
        self.epoch = self.it // per_epoch
        self.last_layer = [p for n, p in self.student.named_parameters() if "last_layer" in n]

    def multi_crop(self, model, views, points):
        """Backbone once per resolution group, the heads once on everything."""
        cls, ref, start = [], [], 0
        sizes = [v.shape[-1] for v in views]
        while start < len(views):
            end = start
            while end < len(views) and sizes[end] == sizes[start]:
                end += 1
            x = torch.cat(views[start:end])
            if self.dense:
                c, r = model.backbone(x, torch.cat(points[start:end]))
                ref.append(r)
            else:
                c, _ = model.backbone(x, torch.zeros(x.shape[0], 0, 2, device=x.device))
            cls.append(c)
            start = end
        c = model.head(torch.cat(cls))
        r = model.ref_head(torch.cat(ref)) if self.dense else None
        return c, r

    def loss(self, s_cls, s_ref, t_cls, t_ref):
        g, n, m, temp = self.g, self.ncrops, self.m, self.temp
        all_cls = not self.dense  # dino: every view; densedino: global views (official default)
        s_cls = (s_cls / 0.1).squeeze(1).chunk(n)
        t_cls_p = F.softmax((t_cls.squeeze(1) - self.centre) / temp, dim=-1).detach().chunk(g)
        if self.dense:
            s_ref = (s_ref / 0.1).unflatten(1, (g, m)).chunk(n)
            t_ref_u = t_ref.unflatten(1, (n, m))
            t_ref_p = F.softmax((t_ref_u - self.ref_centre) / temp, dim=-1).detach().chunk(g)
        cls_loss, ref_loss, n_cls, n_ref = 0.0, 0.0, 0, 0
        for iq in range(g):
            for v in range(n):
                if v == iq:
                    continue
                if all_cls or v < g:
                    cls_loss = cls_loss + torch.sum(
                        -t_cls_p[iq] * F.log_softmax(s_cls[v], dim=-1), dim=-1).mean()
                    n_cls += 1
                if self.dense:
                    ref_loss = ref_loss + torch.sum(
                        -t_ref_p[iq][:, v] * F.log_softmax(s_ref[v][:, iq], dim=-1),
                        dim=-1).mean()
                    n_ref += 1
        total = cls_loss / n_cls
        if self.dense:
            total = 0.5 * total + 0.5 * (ref_loss / n_ref)
        with torch.no_grad():
            k = t_cls.shape[0]
            c = (torch.sum(t_cls, dim=0, keepdim=True) / k).mean(dim=1)
            self.centre.mul_(0.9).add_(c, alpha=0.1)
            if self.dense:
                gref = t_ref_u[:, :g].flatten(1, 2)
                rc = (torch.sum(gref, dim=0, keepdim=True) / k).mean(dim=1)
                self.ref_centre.mul_(0.9).add_(rc, alpha=0.1)
        return total

    def step(self):
        it = self.it
        for i, group in enumerate(self.opt.param_groups):
            group["lr"] = self.lr[it]
            if i == 0:
                group["weight_decay"] = self.wd[it]
        move = lambda ts: [t.to(self.dev, non_blocking=True) for t in ts]  # noqa: E731
        views, t_points, s_points = move(self.views), move(self.t_points), move(self.s_points)
        amp = contextlib.nullcontext() if self.amp_dtype is None else \
            torch.autocast(self.dev.type, dtype=self.amp_dtype)
        with amp:
            with torch.no_grad():
                t_cls, t_ref = self.multi_crop(self.teacher, views[:self.g], t_points)
            s_cls, s_ref = self.multi_crop(self.student, views, s_points)
            loss = self.loss(s_cls, s_ref, t_cls, t_ref)
        value = loss.item()  # the official loop's finiteness check, before backward
        self.opt.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        clip_gradients(self.student, 3.0)
        if self.epoch < self.a.freeze_last_layer:
            for p in self.last_layer:
                p.grad = None
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        m = self.mom[it]
        with torch.no_grad():
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.data.mul_(m).add_((1 - m) * ps.detach().data)
        del t_cls, t_ref, s_cls, s_ref, loss
        return value


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed iterations (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    p.add_argument("--threads", default="auto",
                   help="torch intra-op threads; auto keeps the default (default auto)")
    p.add_argument("--config", default="custom", help="a name for the report (default custom)")
    p.add_argument("--method", default="densedino", choices=("densedino", "dino"))
    p.add_argument("--arch", default="vit_tiny", choices=sorted(ARCHS))
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224, help="trained image side (default 224)")
    p.add_argument("--global-size", type=int, default=96)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--global-crops", type=int, default=2)
    p.add_argument("--local-crops", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-ref", type=int, default=4,
                   help="reference points per (teacher view, view) pair (default 4)")
    p.add_argument("--out-dim", type=int, default=4096)
    p.add_argument("--head-hidden-dim", type=int, default=2048)
    p.add_argument("--head-bottleneck-dim", type=int, default=256)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.0005)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--warmup-epochs", type=int, default=10)
    p.add_argument("--iters-per-epoch", type=int, default=100)
    p.add_argument("--iteration", type=int, default=150,
                   help="the schedules' iteration the timed steps use (default 150)")
    p.add_argument("--freeze-last-layer", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "fp16", "bf16"),
                   help="autocast dtype (default auto: fp16 with a GradScaler on cuda, none on cpu)")
    a = p.parse_args()
    if a.threads != "auto":
        torch.set_num_threads(int(a.threads))

    loop = Loop(a)
    cuda = loop.dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    reset_peak_rss()
    start_rss = rss_mib()
    for _ in range(a.warmup):
        loop.step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    xs = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        loop.step()
        sync()
        xs.append((time.perf_counter() - t0) * 1e3)
    peak = peak_rss_mib()
    peak_dev = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
    s = summarize(xs)
    print("[train_step pytorch] %s: median %.1f ms (min %.1f, max %.1f, n %d), %.1f images/s, "
          "peak RSS %.0f MiB (%.0f at the start)%s, %s amp %s" % (
              a.config, s["median"], s["min"], s["max"], s["n"], a.batch * 1e3 / s["median"], peak,
              start_rss, "" if peak_dev is None else ", peak CUDA allocated %.0f MiB" % peak_dev,
              a.device, loop.amp), file=sys.stderr)
    blas_threads, blas_config = blas_info()
    print(json.dumps({
        "bench": "train_step",
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
        "params": {**{k: v for k, v in vars(a).items()}, "amp": loop.amp,
                   "gpu": torch.cuda.get_device_name() if cuda else None},
        "samples": {a.config: xs},
        "peakRssMiB": {a.config: peak},
        "startRssMiB": {a.config: start_rss},
        **({"peakDeviceMiB": {a.config: peak_dev}} if cuda else {}),
        "primary": a.config,
    }))


if __name__ == "__main__":
    main()
