"""Does a classifier's integer trunk suffice for anomaly detection on whole images?

    python benchmarks/stage1_probe.py --model runs/.../w2a2 --out runs/stage1_probe

Cuts model.int.onnx after a trunk layer, runs it fully convolutionally on whole built-in images
(lowbit/data/whole.py, MVTec AD layout), fits the integer memory bank (lowbit/core/
memory_bank.py) on the train/good codes of each texture and prints image and pixel AUROC per
layer, on the known defect types and on the held-out ones separately (held-out types are only
measured, never used to choose anything). `input_quant/4` is a baseline without learned
features: the 8-bit input codes summed over 4x4 pixel blocks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from lowbit.data import BUILTIN_UNKNOWN, load_whole_images, to_tensor_array
from lowbit.detect.memory_bank import anomaly_map, fit_memory_bank, image_scores
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.runtime import Runtime
from lowbit.train.metrics import auroc

log = logging.getLogger("stage1_probe")

# (tensor, k): the trunk tensor, then an integer k x k sum (k > 1: over k x k blocks for the
# input, over a k x k neighbourhood, PatchCore's local aggregation, for learned codes)
LAYERS = (
    ("backbone.input_quant", 4),
    ("backbone.blocks.0.pool", 1),
    ("backbone.blocks.1.act", 1),
    ("backbone.blocks.1.pool", 1),
    ("backbone.blocks.1.pool", 3),
    ("backbone.blocks.2.act", 1),
    ("backbone.blocks.2.act", 3),
    ("backbone.blocks.2.pool", 1),
)

import whole_image_data  # noqa: E402  (benchmarks/, beside this script)


def aggregate(codes: np.ndarray, k: int, downsample: bool) -> np.ndarray:
    """Return integer k x k sums of codes [N, C, H, W]: over blocks, or a zero-padded window."""
    codes = codes.astype(np.int64)
    if k == 1:
        return codes
    n, c, h, w = codes.shape
    if downsample:
        return codes.reshape(n, c, h // k, k, w // k, k).sum(axis=(3, 5))
    padded = np.pad(codes, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    return sum(padded[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k))


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Return maps [N, h, w] repeated to [N, size, size] (nearest; integer values kept)."""
    factor = size // maps.shape[1]
    return maps.repeat(factor, axis=1).repeat(factor, axis=2)


def probe_texture(category: Path, trunk: onnx.ModelProto, layers, args) -> list[dict]:
    """Return one result row per (tensor, k) of `layers` for one texture category folder."""
    data = load_whole_images(category, max_train_good=args.train_good)
    size = data.test_images[0].shape[0]
    runtime = Runtime(trunk)
    good_codes = runtime.run(to_tensor_array(np.stack(data.train_good)), batch_size=16)
    test_codes = runtime.run(to_tensor_array(np.stack(data.test_images)), batch_size=16)
    masks = np.stack(data.test_masks)
    types = np.array(data.test_types)[data.test_labels]
    good = types == "good"
    groups = {
        "known": ~good & ~np.isin(types, BUILTIN_UNKNOWN),
        "held-out": np.isin(types, BUILTIN_UNKNOWN),
    }
    rows = []
    for name, k in layers:
        started = time.perf_counter()
        low, high = trunk_code_range(trunk, name)
        code_range = (k * k * min(low, 0), k * k * high)
        downsample = name == "backbone.input_quant"
        good_agg = aggregate(good_codes[name], k, downsample)
        bank = fit_memory_bank(good_agg, args.bank, code_range)
        maps = anomaly_map(bank, aggregate(test_codes[name], k, downsample), code_range)
        scores = image_scores(maps)
        pixel_maps = upsample(maps, size)
        row = {"texture": category.name, "layer": name if k == 1 else f"{name}/{k}"}
        row |= {"map": f"{maps.shape[1]}x{maps.shape[2]}", "bank": len(bank)}
        for group, members in groups.items():
            row[f"image_auroc_{group}"] = auroc(-scores[good], -scores[members])
            chosen = good | members
            pixels, truth = pixel_maps[chosen].ravel(), masks[chosen].ravel()
            row[f"pixel_auroc_{group}"] = auroc(-pixels[~truth], -pixels[truth])
        row["image_auroc_by_type"] = {
            kind: auroc(-scores[good], -scores[types == kind])
            for kind in data.test_types
            if kind != "good"
        }
        row["seconds"] = round(time.perf_counter() - started, 1)
        log.info("%s", row)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Return the rows as a fixed-width text table."""
    header = (
        "texture  layer                      map    bank  img known  img held  pix known  pix held"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['texture']:<8} {r['layer']:<26} {r['map']:<6} {r['bank']:>5}  "
            f"{r['image_auroc_known']:9.3f} {r['image_auroc_held-out']:9.3f} "
            f"{r['pixel_auroc_known']:10.3f} {r['pixel_auroc_held-out']:9.3f}"
        )
    return "\n".join(lines)


def format_types(rows: list[dict]) -> str:
    """Return image AUROC per defect type (columns) of each row as a text table."""
    kinds = list(rows[0]["image_auroc_by_type"])
    lines = [f"{'texture':<8} {'layer':<26} " + " ".join(f"{k[:6]:>6}" for k in kinds)]
    for r in rows:
        values = " ".join(f"{r['image_auroc_by_type'][k]:6.3f}" for k in kinds)
        lines.append(f"{r['texture']:<8} {r['layer']:<26} {values}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="export folder (model.int.onnx)")
    parser.add_argument("--out", type=Path, required=True)
    whole_image_data.add_options(parser)
    parser.add_argument("--bank", type=int, default=2000, help="memory bank entries at most")
    parser.add_argument(
        "--layers", default=None, help="e.g. backbone.blocks.1.pool/3 (default all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    textures, data_root = whole_image_data.textures_and_data(args, args.out / "data")
    model = onnx.load(args.model / "model.int.onnx")
    layers = LAYERS
    if args.layers:
        parsed = [(*text.split("/"), "1")[:2] for text in args.layers.split(",") if text]
        layers = tuple((name, int(k)) for name, k in parsed)
    trunk = cut_trunk(model, sorted({name for name, _ in layers}), args.size, args.size)
    rows = [row for t in textures for row in probe_texture(data_root / t, trunk, layers, args)]
    (args.out / "stage1_probe.json").write_text(json.dumps(rows, indent=1))
    print(format_table(rows))
    print()
    print(format_types(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
