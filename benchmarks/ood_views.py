"""Relative Mahalanobis on features summed over dihedral views, on trained runs' held-out types.

    python benchmarks/ood_views.py runs/bench_ood/runs/cosine_logitnorm/seed0/w1a2 [RUN ...]

For each run directory of `lowbit train` / `lowbit bench` (quantized runs through their
fake-quant model, whose feature codes equal the integer graph's): the run's own splits are
loaded, every crop is seen in the first V of its 8 dihedral views (`ood_posthoc.view_outputs`),
the backbone features are summed over the views, the relative Mahalanobis statistics are fitted
on the training split's summed features, and the test crops of the known types are scored
against the run's held-out types: FPR95 and AUROC for V = 1, 2, 4 and 8 (8: the deployed
detector), with MSP and the test accuracy (one view, and logits summed over 8 views) beside
them.
The number of views was chosen on the leave-one-type-out folds (`ood_posthoc.py`), not here.
Writes --out (JSON, one row per run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from ood_posthoc import VIEWS, view_outputs  # beside this script

from lowbit.core.feature_scores import fit_feature_stats, rel_mahalanobis_score
from lowbit.core.scores import auroc, fpr_at_95_tpr, msp
from lowbit.io import atomic_write_json

SPLITS = ("train", "test", "ood")


def run_row(run: Path) -> dict:
    from lowbit.data import load_splits
    from lowbit.train import load_run

    model, record = load_run(run)
    train = record["train"]
    splits = load_splits(
        train["data"],
        image_size=train["image_size"],
        crop=train["crop"],
        unknown=train["unknown"],
        seed=train["seed"],
        per_class=train["per_class"],
    )
    outputs = {name: view_outputs(model, getattr(splits, name).x) for name in SPLITS}
    test_logits = outputs["test"][0][1]
    known, unknown = msp(test_logits), msp(outputs["ood"][0][1])
    row = {
        "run": str(run),
        "recipe": record["recipe"]["name"],
        "seed": train["seed"],
        "unknown": record["unknown_names"],
        "accuracy": float(np.mean(test_logits.argmax(1) == splits.test.y)),
        "accuracy_views8": float(
            np.mean(np.sum([p[1] for p in outputs["test"]], axis=0).argmax(1) == splits.test.y)
        ),
        "msp": {"fpr95": fpr_at_95_tpr(known, unknown), "auroc": auroc(known, unknown)},
    }
    for count in (1, *VIEWS):
        summed = {name: np.sum([p[0] for p in outputs[name][:count]], axis=0) for name in SPLITS}
        stats = fit_feature_stats(summed["train"], splits.train.y, len(splits.class_names))
        known = rel_mahalanobis_score(summed["test"], stats)
        unknown = rel_mahalanobis_score(summed["ood"], stats)
        row[f"rel_mahalanobis_views{count}"] = {
            "fpr95": fpr_at_95_tpr(known, unknown),
            "auroc": auroc(known, unknown),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trained run directories")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ood_views.json"))
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        row = run_row(run)
        rows.append(row)
        cells = "  ".join(
            f"{key} {value['fpr95']:.3f}/{value['auroc']:.3f}"
            for key, value in row.items()
            if isinstance(value, dict)
        )
        print(f"{run} ({row['recipe']}): accuracy {row['accuracy']:.3f}  {cells}", flush=True)
    atomic_write_json(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
