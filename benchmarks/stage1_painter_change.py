"""How much does each known defect painter change the image, the trunk codes and the map?

    python benchmarks/stage1_painter_change.py --run runs/.../seed0/w2a2 --candidate blocks.2.act/3

On validation pairs only (seed 1, known types, never a test image): a whole image is a clean
crop followed by the painter (lowbit/data/whole.py), so replaying the image's generator up to the
crop gives the same image without its defect. Per defect type and texture:
- `pixel_change`: mean |painted - clean| over the mask's pixels and RGB channels, in 8-bit
  levels (the input quantizer keeps 8 bits, so this is what the trunk receives);
- `texture_contrast`: mean |clean - its 9x9 box mean| over the same pixels: the texture's own
  local variation, the background a defect must stand out of;
- `codes_changed`: the share of trunk codes (the candidate's first layer) that differ between
  the pair inside the mask's cells;
- `paired_win`: the share of pairs whose image score rises with the defect, and
  `pixel_auroc`: mask pixels of the painted image against every pixel of the clean images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from stage1_select import KNOWN, SIZE, Trunk, assemble, generate, parse

from lowbit.core.scores import auroc
from lowbit.data.textures import load_texture, random_crop
from lowbit.data.whole import whole_image_rng
from lowbit.detect.maps import upsample_nearest
from lowbit.detect.memory_bank import anomaly_map, fit_memory_bank, image_scores

log = logging.getLogger("stage1_painter_change")


def clean_pairs(texture: str, defect: str, count: int):
    """Return (painted, clean, masks) of validation images of `defect` (seed 1)."""
    painted, masks = generate(texture, 1, f"test/{defect}", count, defect)
    clean = np.stack(
        [
            random_crop(
                whole_image_rng(1, texture, f"test/{defect}", i), load_texture(texture), SIZE
            )
            for i in range(count)
        ]
    )
    return painted, clean, masks


def local_contrast(images: np.ndarray) -> np.ndarray:
    """Return |image - 9x9 box mean| per pixel (mean over channels), edge-padded."""
    x = images.astype(np.float32)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="edge")
    box = sum(padded[:, i : i + SIZE, j : j + SIZE] for i in range(9) for j in range(9)) / 81
    return np.abs(x - box).mean(axis=-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--candidate", default="blocks.2.act/3")
    parser.add_argument("--textures", default="brick,grass,gravel")
    parser.add_argument("--per-type", type=int, default=10)
    parser.add_argument("--fit-images", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    parts, bank_size = parse(args.candidate)
    trunk = Trunk(args.run, sorted({name for name, _ in parts}))
    layer = parts[0][0]
    rows = []
    for texture in args.textures.split(","):
        fit_images, _ = generate(texture, 0, "train/good", args.fit_images, None)
        fit_patches, code_range = assemble(trunk(fit_images), parts, trunk)
        bank = fit_memory_bank(fit_patches, bank_size, code_range)
        for defect in KNOWN:
            painted, clean, masks = clean_pairs(texture, defect, args.per_type)
            change = np.abs(painted.astype(np.int16) - clean.astype(np.int16)).mean(axis=-1)
            contrast = local_contrast(clean)
            codes_p, codes_c = trunk(painted), trunk(clean)
            cells = codes_p[layer].shape[2]
            step = SIZE // cells
            # a cell is in the mask when any of its pixels is
            in_cells = masks.reshape(len(masks), cells, step, cells, step).any(axis=(2, 4))
            differs = (codes_p[layer] != codes_c[layer]).transpose(0, 2, 3, 1)[in_cells]
            maps_p = anomaly_map(bank, assemble(codes_p, parts, trunk)[0], code_range)
            maps_c = anomaly_map(bank, assemble(codes_c, parts, trunk)[0], code_range)
            pix_p, pix_c = (
                upsample_nearest(maps_p, SIZE, SIZE),
                upsample_nearest(maps_c, SIZE, SIZE),
            )
            row = {
                "texture": texture,
                "defect": defect,
                "pixel_change": float(change[masks].mean()),
                "texture_contrast": float(contrast[masks].mean()),
                "codes_changed": float(differs.mean()),
                "paired_win": float((image_scores(maps_p) > image_scores(maps_c)).mean()),
                "pixel_auroc": auroc(-pix_c.ravel(), -pix_p[masks]),
            }
            log.info("%s", row)
            rows.append(row)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"painter_change_{args.run.name}.json").write_text(json.dumps(rows, indent=1))
    print(
        "texture defect         pixel_change texture_contrast codes_changed paired_win pixel_auroc"
    )
    for r in rows:
        print(
            f"{r['texture']:<7} {r['defect']:<13} {r['pixel_change']:12.1f} "
            f"{r['texture_contrast']:16.1f} {r['codes_changed']:13.3f} {r['paired_win']:10.2f} "
            f"{r['pixel_auroc']:11.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
