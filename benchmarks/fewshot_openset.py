"""Few-shot enrollment and open-set detection on the built-in data.

Base models (conv4-64, cosine head) are trained on 5 of the 10 built-in defect types; the other
5 are held out as novel types. Each novel type has a confusable partner among the base types, so
the base features have seen similar cues but never the type itself:

    novel burn          ~ base stain          (dark blob)
    novel fold          ~ base scratch, dent  (light/dark line, shaded relief)
    novel crack         ~ base cut            (dark line)
    novel hole          ~ base contamination  (small dark spots)
    novel discoloration ~ base stain          (soft region)

Rows: fp32 / w2a2 / w1a2 x ce / logitnorm. Every row, fp32 included, starts from one fp32
pre-training run of the same loss (`fp32_pretrain_<loss>`, --epochs epochs) and trains --epochs
more at its recipe, so fp32 and the quantized rows have the same training budget (float
pre-training then QAT, like lowbit/jobs.py's main job). Per row: 5-way 1-shot and 5-shot
accuracy (600 seeded episodes, 15 queries per class, mean +- 95% CI) for `imprint` and
`finetune`; the quantized rows use integer features from the integer runtime (`integer=True`);
open-set AUROC / FPR95 (MSP) of the base model, known test images vs all novel-type images; and
the time to enroll one class from 5 images into the exported w1a2 model.

    python benchmarks/fewshot_openset.py [--epochs 15] [--episodes 600] \
        [--out benchmarks/results/fewshot_openset]

Writes results.json and results.md (the table in README.md) under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from lowbit.io import atomic_write_bytes, atomic_write_json
from lowbit.train import TrainConfig
from lowbit.train.reuse import train_or_reuse

NOVEL = ("burn", "fold", "crack", "hole", "discoloration")
RECIPES = ("fp32", "w2a2", "w1a2")
LOSSES = ("ce", "logitnorm")
METHODS = ("imprint", "finetune")


def run_dir(out: Path, recipe: str, loss: str) -> Path:
    return out / f"{recipe}_{loss}"


def train_models(out: Path, epochs: int) -> dict[tuple[str, str], dict]:
    """Trains (or reuses) every base model; returns {(recipe, loss): metrics + train seconds}."""
    results = {}
    common = dict(
        backbone="conv4", head="cosine", seed=0, data="builtin", epochs=epochs, unknown=NOVEL
    )
    for loss in LOSSES:
        pretrain = run_dir(out, "fp32_pretrain", loss)
        train_or_reuse(TrainConfig(recipe="fp32", loss=loss, **common), pretrain, progress=False)
        for recipe in RECIPES:
            config = TrainConfig(recipe=recipe, loss=loss, init=str(pretrain), **common)
            start = time.perf_counter()
            metrics = train_or_reuse(config, run_dir(out, recipe, loss), progress=False)
            seconds = round(time.perf_counter() - start, 1)
            results[(recipe, loss)] = {**metrics, "train_seconds": seconds}
            print(f"trained {recipe} {loss}: accuracy {metrics['accuracy']:.3f} ({seconds} s)")
    return results


def fewshot_rows(out: Path, episodes: int) -> dict[tuple[str, str], dict]:
    from lowbit.deploy import export_run
    from lowbit.fewshot import evaluate_fewshot

    rows = {}
    for loss in LOSSES:
        for recipe in RECIPES:
            path = run_dir(out, recipe, loss)
            integer = recipe != "fp32"
            if integer and not (path / "model.int.onnx").is_file():
                export_run(path)
            start = time.perf_counter()
            result = evaluate_fewshot(
                path, episodes=episodes, methods=METHODS, integer=integer, seed=0
            )
            result["seconds"] = round(time.perf_counter() - start, 1)
            rows[(recipe, loss)] = result
            print(f"few-shot {recipe} {loss}: {json.dumps(result['results'])}")
    return rows


def enrollment_timing(out: Path, recipe: str = "w1a2", loss: str = "logitnorm") -> dict:
    """Enrolls one novel type from 5 images into a copy of the exported model; returns seconds."""
    import shutil

    from lowbit.data import load_splits
    from lowbit.fewshot import enroll_class, save_images

    source = run_dir(out, recipe, loss)
    export_dir = out / "enroll_demo"
    shutil.rmtree(export_dir, ignore_errors=True)
    export_dir.mkdir(parents=True)
    from lowbit.deploy import export_run

    export_run(source, export_dir)
    splits = load_splits("builtin", image_size=32, unknown=NOVEL, seed=0)
    novel_index = list(splits.unknown_names).index("burn")
    images = splits.ood.x[splits.ood_types == novel_index][:5]
    paths = save_images(images, out / "enroll_images" / "burn")
    report = enroll_class(export_dir, "burn", paths, verify_n=200, verify_random=200)
    return report["timing"]


def table(trained: dict, fewshot: dict) -> str:
    lines = [
        "| recipe | loss | base acc | imprint 1-shot | imprint 5-shot | finetune 1-shot "
        "| finetune 5-shot | open-set AUROC | open-set FPR95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for loss in LOSSES:
        for recipe in RECIPES:
            metrics, result = trained[(recipe, loss)], fewshot[(recipe, loss)]["results"]
            cells = [
                f"{100 * result[m][str(k)]['mean']:.1f} ± {100 * result[m][str(k)]['ci95']:.1f}"
                for m in METHODS
                for k in (1, 5)
            ]
            msp = metrics["ood"]["msp"]
            lines.append(
                f"| {recipe} | {loss} | {metrics['accuracy']:.3f} | {' | '.join(cells)} | "
                f"{msp['auroc']:.3f} | {msp['fpr95']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--out", default="benchmarks/results/fewshot_openset")
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    start = time.perf_counter()
    trained = train_models(out, args.epochs)
    if args.train_only:
        return
    fewshot = fewshot_rows(out, args.episodes)
    timing = enrollment_timing(out)
    results = {
        "novel_classes": list(NOVEL),
        "epochs": args.epochs,
        "rows": [
            {
                "recipe": recipe,
                "loss": loss,
                "accuracy": trained[(recipe, loss)]["accuracy"],
                "ood": trained[(recipe, loss)]["ood"],
                "train_seconds": trained[(recipe, loss)]["train_seconds"],
                "fewshot": fewshot[(recipe, loss)],
            }
            for loss in LOSSES
            for recipe in RECIPES
        ],
        "enroll_timing_seconds": timing,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out / "results.json", results)
    text = table(trained, fewshot) + f"\nenrollment (w1a2, 5 images): {timing}\n"
    atomic_write_bytes(out / "results.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
