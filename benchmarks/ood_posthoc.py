"""Post-hoc feature variants of relative Mahalanobis on the fold models of `ood_select.py`.

    python benchmarks/ood_select.py --out runs/ood_select      # trains the fold models first
    python benchmarks/ood_posthoc.py --runs runs/ood_select

No retraining: for each fold's `plain` model (or `--candidate`), relative Mahalanobis
(`lowbit.core.feature_scores`, statistics fitted on the fold's training split) on
- `final`: the backbone features of the crop alone (one view);
- `sqrt`, `pow0.25`: a power transform of those (non-negative) features before normalizing;
- `blockN`: every block's output summarized per channel by its spatial mean and standard
  deviation (the multi-layer statistics of Lee et al. 2018 and Sastry & Oore 2020);
- `ensemble`: the sum of `final` and the four `blockN` scores, each standardized by its mean
  and standard deviation on the fold's validation crops (known types only); `final+msp` and
  `ensemble+msp` add the standardized MSP;
- `viewsV`: the backbone features summed over the first V of the 8 dihedral views of each crop
  (`lowbit.core.views.dihedral_view`: identity, flips, transposes; exact permutations of the
  input pixels), for the training crops as for the scored ones: V = 2, 4, 8. `viewsV-mean`
  instead averages the V views' scores, with the statistics fitted on every view of every
  training crop.
- other uses of the 8 views: `views8+max` / `views8+min` / `views8+sq` concatenate the sum
  with 8 x the per-channel maximum / minimum over the views / sqrt(8 x the sum of squares);
  `views8-classcov` is relative Mahalanobis with one covariance per class (shrunk towards
  its mean variance by 1 %: 360 crops per class estimate 64 x 64 entries) instead of the shared
  one; `views8-knnK` the K-th largest cosine to the training crops' summed features (Sun et
  al. 2022, K = 1, 10, 50); `views8-msp` MSP of the logits summed over the views.
Each is measured like the selection: the fold's known test crops against the pseudo-unknown type,
mean FPR95 / AUROC over the folds. The real held-out types are never read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from lowbit.core.feature_scores import (
    fit_feature_stats,
    normalize_rows,
    rel_mahalanobis_score,
    whitening,
)
from lowbit.core.scores import auroc, fpr_at_95_tpr, msp
from lowbit.core.views import dihedral_view

SPLITS = ("train", "val", "test", "ood")
VIEWS = (2, 4, 8)
CLASS_SHRINK = 0.01  # views8-classcov: share of the mean variance added to each diagonal
KNN = (1, 10, 50)


def class_covariance_score(train: np.ndarray, labels: np.ndarray, classes: int):
    """Returns a scorer: -min_c [MD_c(z) - MD_0(z)] with one (shrunk) covariance per class."""

    def shrunk(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = z.mean(axis=0)
        covariance = (z - mean).T @ (z - mean) / len(z)
        ridge = CLASS_SHRINK * np.trace(covariance) / len(covariance)
        return mean, whitening(covariance + ridge * np.eye(len(covariance)))

    z = normalize_rows(train)
    background = shrunk(z)
    per_class = [shrunk(z[labels == c]) for c in range(classes)]

    def distance(points: np.ndarray, mean: np.ndarray, white: np.ndarray) -> np.ndarray:
        return np.square((points - mean) @ white.T).sum(axis=1)

    def score(features: np.ndarray) -> np.ndarray:
        points = normalize_rows(features)
        base = distance(points, *background)
        return -np.min([distance(points, *c) - base for c in per_class], axis=0)

    return score


def knn_score(train: np.ndarray, k: int):
    """Returns a scorer: the k-th largest cosine similarity to the training features."""
    bank = normalize_rows(train)
    return lambda features: np.sort(normalize_rows(features) @ bank.T, axis=1)[:, -k]


def view_outputs(model, x: np.ndarray, batch: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns [(features, logits)] of images x, one pair per dihedral view (float64)."""
    pairs = []
    model.eval()
    with torch.no_grad():
        for view in range(max(VIEWS)):
            features, logits = [], []
            for start in range(0, len(x), batch):
                f = model.features(torch.from_numpy(dihedral_view(x[start : start + batch], view)))
                features.append(f.double().numpy())
                logits.append(model.head(f).double().numpy())
            pairs.append((np.concatenate(features), np.concatenate(logits)))
    return pairs


def block_outputs(model, x: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Returns the features, logits and each block's per-channel [mean, std] of images x."""
    blocks = list(model.backbone.blocks)
    taps: dict[int, list] = {i: [] for i in range(len(blocks))}
    hooks = [
        block.register_forward_hook(lambda m, a, out, i=i: taps[i].append(out.detach().double()))
        for i, block in enumerate(blocks)
    ]
    features, logits = [], []
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch):
                f = model.features(torch.from_numpy(x[start : start + batch]))
                features.append(f.double().numpy())
                logits.append(model.head(f).double().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    out = {"final": np.concatenate(features), "logits": np.concatenate(logits)}
    for i, chunks in taps.items():
        maps = torch.cat(chunks)
        out[f"block{i}"] = torch.cat([maps.mean((2, 3)), maps.std((2, 3))], 1).numpy()
    return out


def fold_scores(model, splits) -> dict[str, dict[str, np.ndarray]]:
    """Returns {variant: {split: scores}} for the train/val/test/ood crops of one fold."""
    data = {name: block_outputs(model, getattr(splits, name).x) for name in SPLITS}
    labels, classes = splits.train.y, len(splits.class_names)
    inputs = {
        "final": lambda d: d["final"],
        "sqrt": lambda d: np.sqrt(np.clip(d["final"], 0, None)),
        "pow0.25": lambda d: np.clip(d["final"], 0, None) ** 0.25,
        **{key: (lambda d, key=key: d[key]) for key in data["train"] if key.startswith("block")},
    }
    scores = {"msp": {name: msp(data[name]["logits"]) for name in SPLITS}}
    for variant, pick in inputs.items():
        stats = fit_feature_stats(pick(data["train"]), labels, classes)
        scores[variant] = {name: rel_mahalanobis_score(pick(data[name]), stats) for name in SPLITS}
    outputs = {name: view_outputs(model, getattr(splits, name).x) for name in SPLITS}
    views = {name: [f for f, _ in outputs[name]] for name in SPLITS}
    for count in VIEWS:
        summed = {name: np.sum(views[name][:count], axis=0) for name in SPLITS}
        stats = fit_feature_stats(summed["train"], labels, classes)
        scores[f"views{count}"] = {
            name: rel_mahalanobis_score(summed[name], stats) for name in SPLITS
        }
        every = np.concatenate(views["train"][:count])
        stats = fit_feature_stats(every, np.tile(labels, count), classes)
        scores[f"views{count}-mean"] = {
            name: np.mean([rel_mahalanobis_score(v, stats) for v in views[name][:count]], axis=0)
            for name in SPLITS
        }
    every = {name: np.stack(views[name]) for name in SPLITS}  # [views, N, F]
    summed = {name: every[name].sum(axis=0) for name in SPLITS}
    for variant, extra in {
        "views8+max": lambda f: 8 * f.max(axis=0),
        "views8+min": lambda f: 8 * f.min(axis=0),
        "views8+sq": lambda f: np.sqrt(8 * np.square(f).sum(axis=0)),
    }.items():
        joined = {n: np.concatenate([summed[n], extra(every[n])], axis=1) for n in SPLITS}
        stats = fit_feature_stats(joined["train"], labels, classes)
        scores[variant] = {n: rel_mahalanobis_score(joined[n], stats) for n in SPLITS}
    scorers = {"views8-classcov": class_covariance_score(summed["train"], labels, classes)}
    scorers |= {f"views8-knn{k}": knn_score(summed["train"], k) for k in KNN}
    for variant, scorer in scorers.items():
        scores[variant] = {n: scorer(summed[n]) for n in SPLITS}
    scores["views8-msp"] = {n: msp(np.sum([lg for _, lg in outputs[n]], axis=0)) for n in SPLITS}
    blocks = [key for key in inputs if key.startswith("block")]
    for variant, members in {
        "ensemble": ["final", *blocks],
        "final+msp": ["final", "msp"],
        "ensemble+msp": ["final", *blocks, "msp"],
    }.items():
        scores[variant] = {name: _standardized_sum(scores, members, name) for name in SPLITS}
    return scores


def _standardized_sum(scores: dict, members: list[str], split: str) -> np.ndarray:
    """Sum of the members' scores, each standardized by its validation mean and std."""
    return sum(
        (scores[m][split] - scores[m]["val"].mean()) / scores[m]["val"].std() for m in members
    )


def main(argv: list[str] | None = None) -> int:
    from lowbit.bench.ood_selection import fold_splits
    from lowbit.train import load_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="ood_select.py's --out folder")
    parser.add_argument("--candidate", default="plain")
    args = parser.parse_args(argv)
    selection = json.loads((args.runs / "selection.json").read_text())
    options = selection["options"]
    per_fold = {}
    for pseudo in options["folds"]:
        model, _ = load_run(args.runs / f"fold_{pseudo}" / args.candidate)
        splits = fold_splits(options, pseudo)
        scores = fold_scores(model, splits)
        per_fold[pseudo] = {
            v: (fpr_at_95_tpr(s["test"], s["ood"]), auroc(s["test"], s["ood"]))
            for v, s in scores.items()
        }
        print(f"{pseudo}: " + "  ".join(f"{v} {r[0]:.3f}" for v, r in per_fold[pseudo].items()))
    print(f"mean over {len(per_fold)} folds: variant FPR95 AUROC")
    for variant in next(iter(per_fold.values())):
        fpr = statistics.fmean(per_fold[f][variant][0] for f in per_fold)
        area = statistics.fmean(per_fold[f][variant][1] for f in per_fold)
        print(f"{variant:<10} {fpr:.3f} {area:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
