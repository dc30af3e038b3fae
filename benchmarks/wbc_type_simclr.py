"""SimCLR pretraining of the WBC typer's backbone on unlabelled crops of every lab but the left-out one.

    python benchmarks/wbc_type_simclr.py --leave LAB --out runs/ssl-LAB --steps 600

LAB (bccd, wbc-seg or pbc) is the lab left out: its crops are not seen (``none``: every lab, the start of the
bundled model: ``wbc_type_lolo.py --only all --init runs/ssl-none/model.safetensors``). Then
    python benchmarks/wbc_type_lolo.py --no-extras --epochs 30 --init "runs/ssl-{lab}/model.safetensors"
Seeded; the crops are read from the TXL-PBC WBC crops of benchmarks/txl_wbc_crops.py --per-source 5000.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"  # --data
TXL = HERE.parent / "runs" / "txl-wbc-crops"  # --txl: benchmarks/txl_wbc_crops.py --per-source 5000
CACHE = HERE.parent / "runs" / "wbc-type-lolo" / "crops"  # --cache: the LOLO runs' normalised crops


def groups(leave: str) -> dict[str, list[Path]]:
    from hemaseg.io.images import list_images
    g = {
        "cellavision": [*list_images(DATA / "pbc", recursive=True), *list_images(TXL / "PBC")],
        "bccd": [*list_images(DATA / "bccd-wbc", recursive=True), *list_images(TXL / "BCCD")],
        "raabin": list(list_images(TXL / "Raabin-WBC")),
        "bcdd": list(list_images(TXL / "BCDD")),
        "wbc-seg": [p for p in list_images(DATA / "wbc-seg", recursive=True) if p.suffix.lower() == ".bmp"],
    }
    drop = {"wbc-seg": "wbc-seg", "bccd": "bccd", "pbc": "cellavision", "none": None}[leave]
    return {k: v for k, v in g.items() if k != drop}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leave", required=True, choices=["bccd", "wbc-seg", "pbc", "none"],
                    help="the lab whose crops are not seen; none: every lab (the bundled model's start)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--txl", type=Path, default=TXL)
    ap.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args()
    globals().update(DATA=args.data, TXL=args.txl, CACHE=args.cache)
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)

    from hemaseg.data.transforms import classify_transform, seed_transform
    from hemaseg.models.registry import create_model, save_model
    from hemaseg.tasks.wbc_type.crops import ALL_CLASSES
    from hemaseg.tasks.wbc_type.train import CropDataset, crop_looks, prepare_crops

    g = groups(args.leave)  # the module's paths as given
    paths, gid = [], []
    for k, (name, ps) in enumerate(g.items()):
        paths += ps
        gid += [k] * len(ps)
        print(name, len(ps), flush=True)
    gid = np.array(gid)
    t0 = time.time()
    img, masks, _ = prepare_crops(paths, 80, True, CACHE, True, "reflect")
    print(f"crops {len(img)} in {time.time() - t0:.0f} s", flush=True)
    looks = crop_looks(img, masks)
    ds = CropDataset(img, masks, -np.ones(len(img), int), classify_transform(True), 0.3, None, looks, 0.5, "rgb")
    w = np.array([1.0 / (gid == k).sum() for k in gid])
    classes = [c for c in ALL_CLASSES if c in ({"wbc-seg": ALL_CLASSES, "bccd": ALL_CLASSES, "none": ALL_CLASSES}.get(args.leave)
                                              or ["neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte"])]
    kw = {"backbone": "resnet10-half", "classes": len(classes), "dropout": 0.2, "domain_head": True, "norm": "group",
          "extras": 0}
    model = create_model("wbc-classifier", **kw)
    nf = model.head[-1].in_features
    proj = torch.nn.Sequential(torch.nn.Linear(nf, 256), torch.nn.ReLU(inplace=True), torch.nn.Linear(256, 64))
    params = [*model.backbone.parameters(), *proj.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    seed_transform(ds.transform, args.seed)
    sampler = torch.utils.data.WeightedRandomSampler(w, args.steps * args.batch, replacement=True, generator=gen)

    def collate(batch):
        return batch

    idx = list(sampler)
    model.train()
    log = []
    t0 = time.time()
    for step in range(args.steps):
        ids = idx[step * args.batch:(step + 1) * args.batch]
        a = torch.stack([ds[i][0] for i in ids])
        b = torch.stack([ds[i][0] for i in ids])
        z = F.normalize(proj(model.features(torch.cat([a, b]))), dim=1)
        sim = z @ z.t() / args.tau
        n = len(ids)
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        loss = F.cross_entropy(sim, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        acc = float((sim.argmax(1) == target).float().mean())
        log.append((step, float(loss.detach()), acc))
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(f"step {step} loss {float(loss):.3f} top1 {acc:.3f} {el:.0f} s ({el / (step + 1):.2f} s/step)", flush=True)
        if args.measure and step == 4:
            return
    args.out.mkdir(parents=True, exist_ok=True)
    card = {"name": "wbc-type-ssl", "task": "wbc-type", "classes": classes,
            "architecture": {"name": "wbc-classifier", "kwargs": kw},
            "normalization": {"type": "percentile", "low": 1.0, "high": 99.0, "per_channel": True, "colour": "rgb"},
            "input_size": 80, "cell_normalised": True, "crop_padding": "reflect",
            "training": {"ssl": "simclr", "leave": args.leave, "groups": {k: len(v) for k, v in g.items()},
                         "steps": args.steps, "batch": args.batch, "lr": args.lr, "tau": args.tau,
                         "minutes": round((time.time() - t0) / 60, 1)}}
    save_model(model, args.out / "model", card)
    (args.out / "log.json").write_text(json.dumps(log))
    print("saved", args.out, flush=True)


if __name__ == "__main__":
    main()
