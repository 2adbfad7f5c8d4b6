"""Leave-one-known-type-out check of training changes for unknown types: two self-supervised
auxiliary losses, and dihedral augmentation.

    python benchmarks/ood_auxiliary.py --aux rotation --out runs/ood_aux --folds scratch,crack
    python benchmarks/ood_auxiliary.py --aux contrastive --out runs/ood_aux
    python benchmarks/ood_auxiliary.py --dihedral --out runs/ood_aux

Trains the fold models of `benchmarks/ood_select.py` (same options, same folds, the real held-out
types never read) with the change, and prints every score's FPR95 / AUROC per fold. Compare with
the `plain` candidate of `ood_select.py` on the same folds; `ood_posthoc.py --runs OUT
--candidate NAME` scores the fold models further (NAME: `rotation`, `contrastive`, `dihedral`).

- `rotation`: each crop is also rotated by a random multiple of 90 degrees, and a linear head on
  the backbone features predicts the rotation (Hendrycks et al. 2019, "Using Self-Supervised
  Learning Can Improve Model Robustness and Uncertainty"; OpenOOD's RotPred).
- `contrastive`: a second view of each crop (flips, brightness/contrast jitter, shifts) and the
  NT-Xent loss on a 2-layer projection of the features (SimCLR; for OOD detection with Mahalanobis
  scores: Winkens et al. 2020, "Contrastive Training for Improved Out-of-Distribution Detection").

- `--dihedral`: the training augmentation (random left-right flips and shifts) also flips
  crops up-down and transposes them, each with probability 1/2: all 8 symmetries of the square.

loss = task loss + --weight x auxiliary loss; the classifier sees the unrotated crops. The
auxiliary heads live only in this script: they are not saved, so an interrupted fold resumes
with a fresh auxiliary head (delete its run folder to start it again), and the exported model is
an ordinary lowbit model. This is an experiment harness around `lowbit.train.loop.train_epoch`,
not a training option of lowbit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lowbit.train.loop as loop
from lowbit.bench.ood_selection import Candidate, SelectionOptions, run_selection

AUX_SEED = 1234  # the auxiliary head's initialization, the same on every fold


def rotated(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x with each image rotated by k x 90 degrees, k) for random k in 0..3."""
    k = torch.randint(0, 4, (len(x),), generator=generator)
    out = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k)])
    return out, k


def second_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Returns another random view of each image: flips, x * U(0.8, 1.2) + U(-0.1, 0.1), shift."""
    n = len(x)
    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    gain = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    offset = 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    return loop.augment(x * gain + offset, generator, x.shape[-1] // 8)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each row of `a` must pick its own row of `b` (and back) among all 2N - 1."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    similarity = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    n = len(a)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, target)


def auxiliary_epoch(kind: str, weight: float, temperature: float):
    """Returns a replacement for loop.train_epoch that adds the auxiliary loss."""
    original = loop.train_epoch
    heads: dict[int, nn.Module] = {}

    def train_epoch(model, optimizer, loss_fn, data, config, **kwargs):
        if id(model) not in heads:  # a new fold's model: a new head, in its optimizer
            heads.clear()
            dim = model.feature_dim()
            torch.manual_seed(AUX_SEED)
            if kind == "rotation":
                head = nn.Linear(dim, 4)
            else:
                head = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 64))
            heads[id(model)] = head
            optimizer.add_param_group({"params": head.parameters(), "weight_decay": 0.0})
        head = heads[id(model)]
        generator = torch.Generator().manual_seed(config.seed * 1000 + kwargs["epoch"])
        extra: dict[str, torch.Tensor] = {}

        def forward(x: torch.Tensor) -> torch.Tensor:
            n = len(x)
            if kind == "rotation":
                other, k = rotated(x, generator)
                features = model.backbone(torch.cat([x, other]))
                extra["loss"] = F.cross_entropy(head(features[n:]), k)
            else:
                features = model.backbone(torch.cat([x, second_view(x, generator)]))
                projected = head(features)
                extra["loss"] = nt_xent(projected[:n], projected[n:], temperature)
            return model.head(features[:n])

        def with_auxiliary(logits, y, *rest):
            return loss_fn(logits, y, *rest) + weight * extra["loss"]

        model.forward = forward  # the loop calls model(x); BatchNorm sees both halves
        try:
            return original(model, optimizer, with_auxiliary, data, config, **kwargs)
        finally:
            del model.forward

    return train_epoch


def dihedral_augment(augment):
    """Returns `augment` (loop.augment) followed by random up-down flips and transposes."""

    def dihedral(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
        x = augment(x, generator, max_shift)
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
        turn = torch.rand(len(x), generator=generator) < 0.5
        return torch.where(turn[:, None, None, None], x.transpose(2, 3), x).contiguous()

    return dihedral


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aux", choices=("rotation", "contrastive"), default=None)
    parser.add_argument("--dihedral", action="store_true", help="dihedral augmentation instead")
    parser.add_argument("--weight", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=0.2, help="contrastive only")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--folds", default=None, help="pseudo-unknown types (default: all known)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if (args.aux is None) == (not args.dihedral):
        parser.error("give one of --aux and --dihedral")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    options = SelectionOptions(
        epochs=args.epochs,
        per_class=args.per_class,
        width=args.width,
        folds=tuple(args.folds.split(",")) if args.folds else None,
    )
    name = args.aux or "dihedral"
    original = loop.train_epoch, loop.augment
    if args.dihedral:
        loop.augment = dihedral_augment(loop.augment)
    else:
        loop.train_epoch = auxiliary_epoch(args.aux, args.weight, args.temperature)
    try:
        result = run_selection(options, args.out, (Candidate(name),), progress=False)
    finally:
        loop.train_epoch, loop.augment = original
    for fold, scores in result["per_fold"][name].items():
        row = "  ".join(f"{s} {v['fpr95']:.3f}/{v['auroc']:.3f}" for s, v in scores.items())
        print(f"{fold}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
