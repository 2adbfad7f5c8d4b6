"""Which box should stage 1 hand to the classifier? Compared on validation images only.

    python benchmarks/stage1_handoff.py --exports runs/stage1/exports --out runs/stage1_handoff

Runs on exports whose detectors benchmarks/stage1_inspect.py fitted. The images are a
validation set of the built-in whole images drawn with another seed (--seed 1: no test image
of stage1_inspect.py, seed 0) and of the known defect types only (burn and fold, held out, are
not drawn). For each flagged image, the classifier's type accuracy with the crop cut around:
- `region`: the bounding box of the largest 4-connected region of cells above the pixel
  threshold;
- `region - halo`: that box moved in by the aggregation's halo (k // 2 cells a side), which
  undoes the growth k x k sums give a region (inspect's rule);
- `image threshold`: the largest region of cells above the image threshold;
- `peak region - halo`: the region (cells above the pixel threshold) holding the map's
  maximum, less the halo;
- `peak half - halo`: within that region, the cells connected to the maximum whose value is
  at least halfway from the pixel threshold to the maximum, less the halo;
- `ground truth`: the mask's own box (the classifier's ceiling).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from lowbit.data import BUILTIN_CLASSES, BUILTIN_UNKNOWN, load_whole_images, make_whole_images
from lowbit.detect.inspect import inspect, shrink_box
from lowbit.detect.maps import label_regions, largest_region, upsample_nearest
from lowbit.fewshot.predict import predict
from lowbit.fewshot.regions import region_box

log = logging.getLogger("stage1_handoff")


def boxes_by_rule(row: dict, detector: dict, truth: np.ndarray) -> dict[str, list[int]]:
    """Returns each rule's box for one flagged image."""
    height, width = truth.shape
    anomaly = row["map"]
    stride = height // anomaly.shape[0]
    halo = detector["aggregate"] // 2 * stride
    above = largest_region(anomaly > detector["pixel_threshold"])
    region = region_box(upsample_nearest(above, height, width))
    strict = largest_region(anomaly > detector["image_threshold"])
    peak = np.unravel_index(int(np.argmax(anomaly)), anomaly.shape)
    labels, _ = label_regions(anomaly > detector["pixel_threshold"])
    peak_region = labels == labels[peak]
    half = (int(detector["pixel_threshold"]) + int(anomaly[peak])) // 2
    half_labels, _ = label_regions(peak_region & (anomaly >= half))
    peak_half = half_labels == half_labels[peak]
    return {
        "region": region,
        "region - halo": shrink_box(region, halo, halo),
        "image threshold": region_box(upsample_nearest(strict, height, width)),
        "peak region - halo": shrink_box(
            region_box(upsample_nearest(peak_region, height, width)), halo, halo
        ),
        "peak half - halo": shrink_box(
            region_box(upsample_nearest(peak_half, height, width)), halo, halo
        ),
        "ground truth": region_box(truth),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exports", type=Path, required=True, help="folder of fitted exports")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--textures", default="brick,grass")
    parser.add_argument("--per-defect", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    textures = tuple(t for t in args.textures.split(",") if t)
    known = tuple(d for d in BUILTIN_CLASSES if d not in BUILTIN_UNKNOWN)
    data_root = args.out / "data"
    if not data_root.exists():
        make_whole_images(data_root, 128, 1, 0, args.per_defect, textures, known, args.seed)
    results = []
    for export in sorted(p for p in args.exports.iterdir() if p.is_dir()):
        for texture in textures:
            detector = json.loads((export / "detector" / f"{texture}.json").read_text())
            data = load_whole_images(data_root / texture)
            types = np.array(data.test_types)[data.test_labels]
            rows = inspect(export, data.test_images, category=texture)
            flagged = [i for i, row in enumerate(rows) if row["anomalous"]]
            rules = [boxes_by_rule(rows[i], detector, data.test_masks[i]) for i in flagged]
            result = {"model": export.name, "texture": texture, "flagged": len(flagged)}
            result["images"] = len(rows)
            for rule in rules[0]:
                decisions = predict(
                    export,
                    [data.test_images[i] for i in flagged],
                    boxes=[boxes[rule] for boxes in rules],
                )
                correct = [d["label"] == types[i] for d, i in zip(decisions, flagged)]
                result[rule] = float(np.mean(correct))
            log.info("%s", result)
            results.append(result)
    (args.out / "stage1_handoff.json").write_text(json.dumps(results, indent=1))
    names = list(results[0])[4:]  # the rules, after model, texture, flagged, images
    print("| model | texture | flagged | " + " | ".join(names) + " |")
    print("|" + "---|" * (3 + len(names)))
    for r in results:
        values = " | ".join(f"{r[name]:.2f}" for name in names)
        print(f"| {r['model']} | {r['texture']} | {r['flagged']}/{r['images']} | {values} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
