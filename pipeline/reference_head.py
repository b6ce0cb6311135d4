"""Training a guided colorizer's reference head alone (``GuidedUNet(reference_head=...)``).

The head corrects the reference's palette rendered through L* (``pipeline.models.guided_unet``), and
it counts only where a reference is given and no hint is near. So it can be trained apart from the
rest of the model, whose automatic and hint paths it leaves exactly as they were: this is how a
release trained before the head existed gains one (``python -m pipeline.release reference-head``).
In the DAG the head trains with the rest of the guided entry instead, on the samples given a
reference.

Pairs as the evaluate stage makes them (``pipeline.guided_eval``): each colour tile of a packed split
with the next tile of the same image as its reference, whose palette comes from the reference at 1/4
resolution. The head sees its features (computed once per pair), the palette at L* is its start, and
the target is the truth's a*b* at the head's resolution (1/factor, as ``scripts/reference_learned.py``
found the gain): Adam at 1e-3 decayed to 0 along a cosine over the run, L1, batches of 32 pairs;
the epoch with the lowest val L1 is kept, epoch 0 (no correction) included.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from pipeline import color, guided_eval, hints
from pipeline.data import read_packed
from pipeline.errors import AstroganError
from pipeline.models.guided_unet import GuidedUNet, ReferenceHead

BATCH = 32
LR = 1e-3
AT_L = slice(5, 7)   # ReferenceHead.features' palette at L*


@torch.no_grad()
def reference_pairs(packed: str | Path, split: str, head: ReferenceHead, batch: int = 32
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the head's features (N, FEATURES, h, w), the truth's a*b* / 110 at that resolution (N, 2, h,
    w)) of every colour tile of ``split`` that has another tile of its image as a reference."""
    tiles, rows = read_packed(packed, split, colour_only=True)
    refs = guided_eval.reference_rows([r["image_id"] for r in rows])
    idx = [i for i, j in enumerate(refs) if j is not None]
    if not idx:
        raise AstroganError(f"{packed}: no {split} tile has another tile of its image to be its reference; "
                            "the head needs images cut into 2 or more tiles")
    feats, truth = [], []
    for n0 in tqdm(range(0, len(idx), batch), desc=f"reference pairs ({split})", unit="batch"):
        ii = idx[n0:n0 + batch]
        lab = color.rgb_to_lab(tiles[ii].float() / 255)
        ref = color.rgb_to_lab(tiles[[refs[i] for i in ii]].float() / 255)
        unit = hints.unit_of(*lab.shape[-2:])
        pals = hints.palette(ref[..., ::4, ::4])
        none = torch.zeros(0, 5), torch.zeros(0)
        x = torch.stack([hints.encode(lab[k, 0], hints.Guide(*none, pals[k], unit)) for k in range(len(ii))])
        feats.append(head.features(x))
        truth.append(F.avg_pool2d(color.normalize_ab(lab[:, 1:]), head.factor))
    return torch.cat(feats), torch.cat(truth)


@torch.no_grad()
def ratio(head: ReferenceHead | None, feats: torch.Tensor, truth: torch.Tensor) -> float:
    """a*b* L1 over grey's at the head's resolution (the palette alone for ``head`` None)."""
    err = grey = 0.0
    for i in range(0, len(feats), 256):
        f, t = feats[i:i + 256], truth[i:i + 256]
        pred = f[:, AT_L] + (head.body(f) if head is not None else 0)
        err += float((pred - t).abs().sum())
        grey += float(t.abs().sum())
    return round(err / max(grey, 1e-12), 4)


def train_head(model: GuidedUNet, packed: str | Path, epochs: int, seed: int = 0) -> dict:
    """Train ``model.reference_head`` alone on ``packed``'s train pairs, keep the epoch with the best
    val L1, and return the record (the val and test curves beside the palette alone)."""
    head = model.reference_head
    if head is None:
        raise AstroganError("this guided model has no reference head (reference_head: 0)")
    data = {split: reference_pairs(packed, split, head) for split in ("train", "val", "test")}
    (xt, yt), (xv, yv) = data["train"], data["val"]
    torch.manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), LR)
    per_epoch = -(-len(xt) // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs * per_epoch, 1))
    order = torch.Generator().manual_seed(seed)
    record = {"pairs": {s: len(x) for s, (x, _) in data.items()},
              "palette_alone": {s: ratio(None, *data[s]) for s in ("val", "test")},
              "epochs": epochs, "seed": seed, "batch": BATCH, "lr": LR, "schedule": "cosine to 0",
              "curve": []}
    # epoch 0 is the head as it starts (a new one: zero, the palette alone): training never leaves a
    # head that does worse on val than that
    best = {"epoch": 0, "val": ratio(head, xv, yv), "test": ratio(head, *data["test"])}
    state = copy.deepcopy(head.state_dict())
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc="reference head", unit="epoch")
    for epoch in bar:
        head.train()
        for b in torch.randperm(len(xt), generator=order).split(BATCH):
            loss = (xt[b][:, AT_L] + head.body(xt[b]) - yt[b]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        row = {"epoch": epoch + 1, "val": ratio(head, xv, yv), "test": ratio(head, *data["test"])}
        record["curve"].append(row)
        bar.set_postfix(val=row["val"])
        if row["val"] < best["val"]:
            best, state = row, copy.deepcopy(head.state_dict())
    head.load_state_dict(state)
    record.update(best_on_val=best, seconds=round(time.perf_counter() - t0, 1))
    return record
