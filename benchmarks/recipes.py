"""Recipe comparison on the built-in data: fp32 vs w2a2 vs w1a2 (cosine head), CE vs LogitNorm.

Subsumed by `lowbit bench` (lowbit/bench/): this script is that sweep with this comparison's
recipes and losses. Quantized runs start from the fp32 run of the same seed and loss.

    python benchmarks/recipes.py [--epochs 15] [--seeds 0] [--out benchmarks/results/recipes]

is `lowbit bench --recipes fp32,w2a2,w1a2 --losses logitnorm,ce --epochs 15 --seeds 1 --out ...`
and writes results.json, results.csv, report.md and the plots under --out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lowbit.bench import BenchOptions, run_bench
from lowbit.bench.report import summary_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", default="0", help="seeds 0,1,...,N-1 (comma-separated)")
    parser.add_argument("--out", default="benchmarks/results/recipes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if seeds != list(range(len(seeds))):
        parser.error(f"--seeds {args.seeds}: lowbit bench runs seeds 0..N-1, e.g. 0 or 0,1,2")
    options = BenchOptions(
        recipes=("fp32", "w2a2", "w1a2"),
        losses=("logitnorm", "ce"),
        epochs=args.epochs,
        seeds=len(seeds),
    )
    command = f"python benchmarks/recipes.py --epochs {args.epochs} --seeds {args.seeds}"
    results = run_bench(options, Path(args.out), command=command)
    print(summary_table(results))


if __name__ == "__main__":
    main()
