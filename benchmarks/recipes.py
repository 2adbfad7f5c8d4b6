"""Recipe comparison on the built-in data: fp32 vs w2a2 vs w1a2 (cosine head, LogitNorm), and
CE vs LogitNorm at w1a2. Same seeds, same data, same epochs for every row; the quantized runs
start from the fp32 run of the same seed (float pre-training, then QAT: lowbit's default path).

    python benchmarks/recipes.py [--epochs 15] [--seeds 0] [--out benchmarks/results/recipes]

Writes results.json and results.md (the table in README.md) under --out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lowbit.io import atomic_write_bytes, atomic_write_json
from lowbit.pipeline import _train_or_reuse
from lowbit.train import TrainConfig

ROWS = [("fp32", "logitnorm"), ("w2a2", "logitnorm"), ("w1a2", "logitnorm"), ("w1a2", "ce")]


def run(out: Path, epochs: int, seeds: list[int]) -> list[dict]:
    results = []
    for seed in seeds:
        common = dict(backbone="conv4", head="cosine", seed=seed, data="builtin", epochs=epochs)
        fp32_dir = out / f"seed{seed}" / "fp32_logitnorm"
        for recipe, loss in ROWS:
            run_dir = out / f"seed{seed}" / f"{recipe}_{loss}"
            init = None if recipe == "fp32" else str(fp32_dir)
            if recipe == "fp32" and loss != "logitnorm":
                continue
            start = time.perf_counter()
            metrics = _train_or_reuse(
                TrainConfig(recipe=recipe, loss=loss, init=init, **common), run_dir, progress=False
            )
            results.append(
                {
                    "seed": seed,
                    "recipe": recipe,
                    "loss": loss,
                    "accuracy": metrics["accuracy"],
                    "ood": metrics["ood"],
                    "model_bits": metrics["model_bits"],
                    "train_seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(
                f"seed {seed} {recipe:5s} {loss:9s} accuracy {metrics['accuracy']:.3f} "
                f"msp fpr95 {metrics['ood']['msp']['fpr95']:.3f}",
                flush=True,
            )
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| recipe | loss | accuracy | MSP AUROC | MSP FPR95 | energy FPR95 | model bits |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe, loss in ROWS:
        rows = [r for r in results if r["recipe"] == recipe and r["loss"] == loss]
        if not rows:
            continue

        def mean(get):
            return statistics.mean(get(r) for r in rows)

        lines.append(
            f"| {recipe} | {loss} | {mean(lambda r: r['accuracy']):.3f} | "
            f"{mean(lambda r: r['ood']['msp']['auroc']):.3f} | "
            f"{mean(lambda r: r['ood']['msp']['fpr95']):.3f} | "
            f"{mean(lambda r: r['ood']['energy']['fpr95']):.3f} | {rows[0]['model_bits']:,} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="benchmarks/results/recipes")
    args = parser.parse_args()
    out = Path(args.out)
    results = run(out, args.epochs, [int(s) for s in args.seeds.split(",")])
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", table(results).encode())
    print(table(results))


if __name__ == "__main__":
    main()
