"""Leave-one-known-type-out selection of the unknown-type detector (lowbit/bench/ood_selection.py).

    python benchmarks/ood_select.py --out runs/ood_select                  # built-in data
    python benchmarks/ood_select.py --data DIR --unknown A,B --out runs/sel  # your defect types

Trains every candidate (outlier exposure off / on, outlier kinds) with each known type held out
in turn, measures every score against that pseudo-unknown type, and prints the ranking by mean
FPR95 over the folds. The real held-out types are never read. Finished fold runs are reused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lowbit.bench.ood_selection import (
    CANDIDATES,
    SelectionOptions,
    format_ranking,
    run_selection,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="builtin")
    parser.add_argument("--unknown", default=None, help="real held-out types, comma-separated")
    parser.add_argument("--recipe", default="fp32")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", default=None, help="pseudo-unknown types (default: all known)")
    parser.add_argument(
        "--candidates",
        default=None,
        help=f"training settings to run, comma-separated (default: all of "
        f"{', '.join(c.name for c in CANDIDATES)})",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr)
    split = lambda text: tuple(t for t in text.split(",") if t) if text else None  # noqa: E731
    options = SelectionOptions(
        data=args.data,
        unknown=split(args.unknown),
        recipe=args.recipe,
        epochs=args.epochs,
        per_class=args.per_class,
        width=args.width,
        image_size=args.image_size,
        seed=args.seed,
        folds=split(args.folds),
    )
    candidates = CANDIDATES
    if args.candidates:
        named = {c.name: c for c in CANDIDATES}
        unknown = [name for name in split(args.candidates) if name not in named]
        if unknown:
            parser.error(f"--candidates: {unknown} not among {list(named)}")
        candidates = tuple(named[name] for name in split(args.candidates))
    result = run_selection(options, args.out, candidates, progress=not args.quiet)
    print(format_ranking(result))
    print(f"chosen: {result['chosen']}  ({args.out / 'selection.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
