"""Does a trunk trained to tell defect-free patches from painted known defects make stage 1 better?

    python benchmarks/stage1_trunk.py --out runs/stage1_trunk [--per-class 600] [--epochs 15]

The classifier's trunk never saw defect-free texture (its crops all hold a defect). This study
trains the same conv4-64 on 32 px patches cut at the whole images' native scale (no resizing),
nine classes: `good` (a random patch of a defect-free 96 px image) and each *known* defect type
(a patch around the painted defect, jittered by up to 6 px); burn and fold are never painted.
Images come from `whole_image_rng(7, ...)` (seed 7: none of them is a fit, validation or test
image of stage1_select.py). It then runs stage1_select.py's validation protocol (seed 1, known
types only) on the new trunk, so the result compares with the classifier trunk's validation
table in docs/anomaly.md. Steps, each a subprocess of the installed tools:

1. write the patch folder (`<out>/patches/<class>/NNNN.png`);
2. `lowbit train --data <out>/patches --no-crop --recipe fp32 --epochs E --out <out>/fp32`;
3. `python benchmarks/stage1_select.py --run <out>/fp32 --fit-images 50 --candidates ...`.

`--recipe w2a2` adds a QAT run from the fp32 weights (`--init`), exported, and selects on its
integer codes too.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lowbit.data import BUILTIN_CLASSES, BUILTIN_UNKNOWN
from lowbit.data.whole import generate_whole_image, whole_image_rng

SEED = 7
PATCH = 32
SOURCE = 96  # side of the whole image a patch is cut from (the defect window is 64 px)
JITTER = 6
TEXTURES = ("brick", "grass", "gravel")
CANDIDATES = "blocks.1.pool/3 blocks.2.act/1 blocks.2.act/3 blocks.2.pool/3"


def write_patches(out: Path, per_class: int) -> Path:
    """Writes good + known-type patches (PNG) under out/<class>/ and returns out."""
    known = [t for t in BUILTIN_CLASSES if t not in BUILTIN_UNKNOWN]
    for name in ("good", *known):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            texture = TEXTURES[index % len(TEXTURES)]
            rng = whole_image_rng(SEED, texture, f"trunk/{name}", index)
            defect = None if name == "good" else name
            image, mask = generate_whole_image(rng, texture, defect, SOURCE, 64)
            if defect is None:
                top, left = (int(v) for v in rng.integers(0, SOURCE - PATCH + 1, 2))
            else:
                rows, cols = np.nonzero(mask)
                centre = np.array([rows.mean(), cols.mean()]) + rng.integers(-JITTER, JITTER + 1, 2)
                top, left = (int(np.clip(round(c - PATCH / 2), 0, SOURCE - PATCH)) for c in centre)
            Image.fromarray(image[top : top + PATCH, left : left + PATCH]).save(
                folder / f"{index:04d}.png"
            )
    return out


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--recipe", default="fp32", help="fp32, or a quantized recipe (+QAT)")
    parser.add_argument("--candidates", default=CANDIDATES)
    args = parser.parse_args(argv)
    patches = args.out / "patches"
    if not patches.is_dir():
        write_patches(patches, args.per_class)
    lowbit = [shutil.which("lowbit") or str(Path(sys.executable).with_name("lowbit"))]
    train = [*lowbit, "train", "--data", str(patches), "--no-crop", "--epochs", str(args.epochs)]
    runs = [args.out / "fp32"]
    if not (runs[0] / "checkpoint.pt").is_file():
        run([*train, "--recipe", "fp32", "--out", str(runs[0]), "--quiet"])
    if args.recipe != "fp32":
        runs.append(args.out / args.recipe)
        if not (runs[1] / "model.int.onnx").is_file():
            run([*train, "--recipe", args.recipe, "--init", str(runs[0]), "--out", str(runs[1])])
            run([*lowbit, "export", str(runs[1]), "--quiet"])
    select = Path(__file__).with_name("stage1_select.py")
    for run_dir in runs:
        run(
            [
                sys.executable,
                str(select),
                "--run",
                str(run_dir),
                "--out",
                str(args.out / "select"),
                "--fit-images",
                "50",
                "--candidates",
                args.candidates,
                "--tag",
                f"trunk_{run_dir.name}",
            ]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
