"""Does the quantized model's last activation throw away what tells unknown types apart?

    python benchmarks/ood_select.py --out runs/ood_select --candidates plain   # fp32 fold models
    python benchmarks/ood_preact.py --runs runs/ood_select --out runs/ood_preact

For each fold of `ood_select.py` (a known type held out as the pseudo-unknown; the real held-out
types never read), trains the quantized recipe (--recipe, default w1a2) for --epochs of QAT
from the fold's fp32 `plain` model, as `lowbit bench` trains a recipe from its fp32 run, then
scores relative Mahalanobis (statistics fitted on the fold's training crops) on:
- `codes`: the backbone's feature codes (the last block's pooled 2-bit activations), the
  deployed features;
- `preact`: the last block's input to its quantized ReLU (BN of the conv accumulator, an affine
  function of an exact integer per channel), 2 x 2 max-pooled like the codes: what the 2-bit
  activation quantizes;
- `preact+`: the same, negative values set to 0 (the activation without its clip and rounding);
- `preact-mean`: its spatial mean per channel;
each on one view and summed over the 8 dihedral views (`@8`). Prints per fold and the mean
FPR95 / AUROC over the folds, and the fold models' test accuracy; writes preact.json.
--distill-weight W > 0 trains the fold models with the fold's fp32 model as the teacher too
(`lowbit train --teacher`, knowledge distillation at temperature 4), into <recipe>_distill<W>
and preact_distill<W>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from lowbit.core.feature_scores import fit_feature_stats, rel_mahalanobis_score
from lowbit.core.scores import auroc, fpr_at_95_tpr
from lowbit.core.views import dihedral_view

SPLITS = ("train", "test", "ood")
VIEWS = 8
log = logging.getLogger("ood_preact")


def view_tensors(model, x: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Returns {name: float64 [views, N, F]} of the feature variants, and the view-0 logits."""
    last = model.backbone.blocks[-1]
    captured = {}
    hook = last.bn.register_forward_hook(lambda m, i, o: captured.__setitem__("bn", o.detach()))
    out: dict[str, list] = {k: [] for k in ("codes", "preact", "preact+", "preact-mean", "logits")}
    model.eval()
    try:
        with torch.no_grad():
            for view in range(VIEWS):
                parts: dict[str, list] = {k: [] for k in out}
                for start in range(0, len(x), batch):
                    images = torch.from_numpy(dihedral_view(x[start : start + batch], view))
                    features = model.features(images)
                    pooled = torch.nn.functional.max_pool2d(captured["bn"], 2)
                    parts["codes"].append(features)
                    parts["preact"].append(pooled.flatten(1))
                    parts["preact+"].append(torch.relu(pooled).flatten(1))
                    parts["preact-mean"].append(captured["bn"].mean(dim=(2, 3)))
                    parts["logits"].append(model.head(features))
                for key, chunks in parts.items():
                    out[key].append(torch.cat(chunks).double().numpy())
    finally:
        hook.remove()
    return {key: np.stack(value) for key, value in out.items()}


def fold_result(model, splits) -> dict[str, tuple[float, float]]:
    data = {name: view_tensors(model, getattr(splits, name).x) for name in SPLITS}
    labels, classes = splits.train.y, len(splits.class_names)
    result = {}
    for variant in ("codes", "preact", "preact+", "preact-mean"):
        for views in (1, VIEWS):
            summed = {name: data[name][variant][:views].sum(axis=0) for name in SPLITS}
            stats = fit_feature_stats(summed["train"], labels, classes)
            known, unknown = (rel_mahalanobis_score(summed[n], stats) for n in ("test", "ood"))
            result[f"{variant}@{views}"] = (fpr_at_95_tpr(known, unknown), auroc(known, unknown))
    predicted = data["test"]["logits"][0].argmax(axis=1)
    result["accuracy"] = float(np.mean(predicted == splits.test.y))
    return result


def main(argv: list[str] | None = None) -> int:
    from lowbit.bench.ood_selection import fold_splits
    from lowbit.train import TrainConfig, load_run
    from lowbit.train.reuse import train_or_reuse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="ood_select.py's --out folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="w1a2")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--folds", default=None, help="comma list (default: every fold)")
    parser.add_argument("--distill-weight", type=float, default=0.0, help="0: no teacher")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    options = json.loads((args.runs / "selection.json").read_text())["options"]
    folds = args.folds.split(",") if args.folds else options["folds"]
    tag = f"_distill{args.distill_weight:g}" if args.distill_weight > 0 else ""
    per_fold = {}
    for pseudo in folds:
        splits = fold_splits(options, pseudo)
        fp32_run = str(args.runs / f"fold_{pseudo}" / "plain")
        config = TrainConfig(
            recipe=args.recipe,
            epochs=args.epochs,
            init=fp32_run,
            teacher=fp32_run if tag else None,
            distill_weight=args.distill_weight if tag else TrainConfig.distill_weight,
            width=options["width"],
            image_size=options["image_size"],
            crop=options["crop"],
            data=options["data"],
            per_class=options["per_class"],
            unknown=(pseudo,),
            seed=options["seed"],
        )
        run_dir = args.out / f"fold_{pseudo}" / f"{args.recipe}{tag}"
        train_or_reuse(config, run_dir, False, splits=splits, ood_views=1)
        model, _ = load_run(run_dir)
        per_fold[pseudo] = fold_result(model, splits)
        log.info("%s: %s", pseudo, per_fold[pseudo])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"preact{tag}.json").write_text(json.dumps(per_fold, indent=1))
    variants = [key for key in next(iter(per_fold.values())) if key != "accuracy"]
    print("| variant | " + " | ".join(per_fold) + " | mean FPR95 | mean AUROC |")
    print("|---|" + "---|" * (len(per_fold) + 2))
    for variant in variants:
        fprs = [per_fold[f][variant][0] for f in per_fold]
        areas = [per_fold[f][variant][1] for f in per_fold]
        cells = " | ".join(f"{v:.3f}" for v in [*fprs, statistics.fmean(fprs)])
        print(f"| {variant} | {cells} | {statistics.fmean(areas):.3f} |")
    accuracy = [per_fold[f]["accuracy"] for f in per_fold]
    print(f"test accuracy {min(accuracy):.3f}-{max(accuracy):.3f} over {len(accuracy)} folds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
