"""The built-in whole-image set the stage-1 benchmarks share: its options and its folder.

`add_options(parser)` adds --textures, --size, --train-good, --test-good, --test-per-defect and
--seed; `textures_and_data(args, root)` returns the textures and the data folder under `root`,
writing it with make_whole_images when it does not exist yet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.data.whole import make_whole_images


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--textures", default="brick,grass", help="built-in textures, commas")
    parser.add_argument("--size", type=int, default=128, help="whole-image height and width")
    parser.add_argument("--train-good", type=int, default=100, help="train/good per texture")
    parser.add_argument("--test-good", type=int, default=20, help="test/good per texture")
    parser.add_argument("--test-per-defect", type=int, default=10, help="test images per type")
    parser.add_argument("--seed", type=int, default=0)


def textures_and_data(args: argparse.Namespace, root: Path) -> tuple[tuple[str, ...], Path]:
    textures = tuple(t for t in args.textures.split(",") if t)
    if not root.exists():
        make_whole_images(
            root,
            args.size,
            args.train_good,
            args.test_good,
            args.test_per_defect,
            textures=textures,
            seed=args.seed,
        )
    return textures, root
