"""Does DINO learn in a few minutes of CPU? Plain DINO in PyTorch, as the official recipe computes
it (torchvision augmentations, the official loss, schedules, per-parameter clipping, last-layer
freeze, EMA; the model of bench/vit_step.py), on 10,000 Fashion-MNIST items, then a weighted k-NN
(k 20, T 0.07) of the teacher, the student and a random-init model on Fashion-MNIST (5,000 train /
1,000 test items). Written for this project (not the official code), to tell a defect of the
toolkit from a regime that does not learn (docs/RESULTS.md).

Setup (the items as an ImageFolder, then the same run in the toolkit for comparison):

    deno eval 'import * as dd from "./mod.ts"; const ds = await dd.FashionMNIST.open();
      for (let c = 0; c < 10; c++) await Deno.mkdir(`/tmp/fmnist/train/${c}`, {recursive: true});
      for (let i = 0; i < 10000; i++) { const s = await ds.get(i);
        await dd.savePng(`/tmp/fmnist/train/${s.label}/${i}.png`, s.image); s.image.free(); }'
    /usr/bin/python3 -B bench/dino_regime_check.py LOCAL_CROPS EPOCHS LR MOMENTUM [ROOT]
    deno task train --preset demo --data imagefolder:/tmp/fmnist/train --method dino \
      --head-hidden-dim 256 --head-bottleneck-dim 64 --out-dim 256 --global-size 32 \
      --local-size 16 --local-crops 0 --batch-size 32 --epochs 4 --lr 0.004 --out /tmp/fm
    deno run -A scripts/eval_knn.ts --weights /tmp/fm --data fashion-mnist \
      --limit-train 5000 --limit-val 1000

Prints one JSON line with the three k-NN top-1 accuracies.
"""
import math, sys, time, json, random
import numpy as np
import torch, torch.nn.functional as F
from torchvision import datasets, transforms
from PIL import ImageFilter, ImageOps
sys.path.insert(0, "/work/main/bench")
from vit_step import Model, param_groups, clip_gradients  # noqa

torch.manual_seed(0); random.seed(0); np.random.seed(0)
torch.set_num_threads(1)
G, L = 32, 16
LOCAL = int(sys.argv[1]) if len(sys.argv) > 1 else 0
EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
LR = float(sys.argv[3]) if len(sys.argv) > 3 else 0.004
MOM = float(sys.argv[4]) if len(sys.argv) > 4 else 0.99
ROOT = sys.argv[5] if len(sys.argv) > 5 else "/tmp/fmnist/train"
B, OUT = 32, 256


class Blur:
    def __init__(self, p): self.p = p
    def __call__(self, img):
        if random.random() > self.p: return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class Sol:
    def __init__(self, p): self.p = p
    def __call__(self, img): return ImageOps.solarize(img) if random.random() < self.p else img


flip_color = transforms.Compose([
    transforms.RandomHorizontalFlip(p=0.5),
    transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
    transforms.RandomGrayscale(p=0.2)])
norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
g1 = transforms.Compose([transforms.RandomResizedCrop(G, scale=(0.4, 1), interpolation=transforms.InterpolationMode.BICUBIC), flip_color, Blur(1.0), norm])
g2 = transforms.Compose([transforms.RandomResizedCrop(G, scale=(0.4, 1), interpolation=transforms.InterpolationMode.BICUBIC), flip_color, Blur(0.1), Sol(0.2), norm])
lc = transforms.Compose([transforms.RandomResizedCrop(L, scale=(0.05, 0.4), interpolation=transforms.InterpolationMode.BICUBIC), flip_color, Blur(0.5), norm])


def aug(img):
    img = img.convert("RGB")
    return [g1(img), g2(img)] + [lc(img) for _ in range(LOCAL)]


ds = datasets.ImageFolder(ROOT, transform=aug)
loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=True, drop_last=True, num_workers=1)
student = Model("vit_mini", 8, 32, OUT, 0.1)
teacher = Model("vit_mini", 8, 32, OUT, 0.0)
# smaller heads as in our runs
from vit_step import DINOHead  # noqa
for m in (student, teacher):
    m.head = DINOHead(128, OUT, hidden=256, bottleneck=64)
    m.ref_head = torch.nn.Identity()
teacher.load_state_dict(student.state_dict())
for p in teacher.parameters(): p.requires_grad = False
opt = torch.optim.AdamW(param_groups(student))
n_it = len(loader) * EPOCHS
warm = len(loader)


def cos(base, final, warmup, i):
    if i < warmup: return base * i / max(warmup - 1, 1)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (i - warmup) / (n_it - warmup)))


centre = torch.zeros(1, OUT)
nc = 2 + LOCAL
it = 0
t0 = time.time()
for ep in range(EPOCHS):
    for views, _ in loader:
        lr = cos(LR * B / 256, 1e-6, warm, it); wd = cos(0.04, 0.4, 0, it); m = cos(MOM, 1.0, 0, it)
        for i, g in enumerate(opt.param_groups):
            g["lr"] = lr
            if i == 0: g["weight_decay"] = wd
        def run(model, vs):
            outs, s = [], 0
            while s < len(vs):
                e = s
                while e < len(vs) and vs[e].shape[-1] == vs[s].shape[-1]: e += 1
                x = torch.cat(vs[s:e])
                c, _ = model.backbone(x, torch.zeros(x.shape[0], 0, 2))
                outs.append(c); s = e
            return model.head(torch.cat(outs))
        with torch.no_grad():
            t = run(teacher, views[:2]).squeeze(1)
        s = run(student, views).squeeze(1)
        tp = F.softmax((t - centre) / 0.04, dim=-1).chunk(2)
        sl = (s / 0.1).chunk(nc)
        loss, n = 0, 0
        for iq in range(2):
            for v in range(nc):
                if v == iq: continue
                loss = loss + torch.sum(-tp[iq] * F.log_softmax(sl[v], dim=-1), dim=-1).mean(); n += 1
        loss = loss / n
        opt.zero_grad(); loss.backward(); clip_gradients(student, 3.0)
        if ep < 1:
            for nme, p in student.named_parameters():
                if "last_layer" in nme: p.grad = None
        opt.step()
        with torch.no_grad():
            centre = centre * 0.9 + t.mean(0, keepdim=True) * 0.1
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.data.mul_(m).add_((1 - m) * ps.detach().data)
        if it % 100 == 0: print(it, round(loss.item(), 3), round(time.time() - t0), file=sys.stderr)
        it += 1

# k-NN on FMNIST (train 5000 / test 1000), images resized 28 -> 32 bicubic, normalised
import gzip
def idx(p):
    b = gzip.open(p).read()
    if b[2] == 8 and b[3] == 3: return np.frombuffer(b, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.frombuffer(b, np.uint8, offset=8)
d = "/usr/share/datasets/fashion-mnist/"
Xtr, ytr = idx(d + "train-images-idx3-ubyte.gz")[:5000], idx(d + "train-labels-idx1-ubyte.gz")[:5000]
Xte, yte = idx(d + "t10k-images-idx3-ubyte.gz")[:1000], idx(d + "t10k-labels-idx1-ubyte.gz")[:1000]
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1); std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
def feats(X, model):
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(X), 256):
            x = torch.from_numpy(X[i:i + 256].astype(np.float32) / 255).unsqueeze(1).repeat(1, 3, 1, 1)
            x = F.interpolate(x, size=32, mode="bicubic", align_corners=False, antialias=False).clamp(0, 1)
            x = (x - mean) / std
            c, _ = model.backbone(x, torch.zeros(x.shape[0], 0, 2))
            out.append(F.normalize(c.squeeze(1), dim=1))
    return torch.cat(out)
def knn(model):
    ftr, fte = feats(Xtr, model), feats(Xte, model)
    sim = fte @ ftr.T
    v, i = sim.topk(20, dim=1)
    lab = torch.from_numpy(ytr.astype(np.int64))[i]
    votes = torch.zeros(len(Xte), 10).scatter_add_(1, lab, (v / 0.07).exp())
    return (votes.argmax(1).numpy() == yte).mean() * 100
print(json.dumps({"local": LOCAL, "epochs": EPOCHS, "lr": LR, "mom": MOM, "iters": it, "teacher_knn": knn(teacher), "student_knn": knn(student), "random_knn": knn(Model("vit_mini", 8, 32, OUT, 0.0)), "seconds": time.time() - t0}))
