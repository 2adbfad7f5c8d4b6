"""Stage 1 fitted into exports, then `inspect` end to end on built-in whole images.

    python benchmarks/stage1_inspect.py --models runs/.../w2a2,runs/.../w1a2 --out runs/stage1

Per model and texture: copies the export (the source stays untouched), fits the detector with
`lowbit detect fit`'s defaults on the first --train-good train/good images (80% bank, 20%
validation: the thresholds), then runs `inspect` on test/good and every defect type. Reports
image and pixel AUROC and AUPRO (lowbit/detect/metrics.py), known types and held-out burn/fold
apart (held-out types are measured, never used to choose), the false-alarm rate on test good
images and the share of defect images flagged at the calibrated threshold, and the type
accuracy of inspect on the flagged images of known types against the classifier on the
ground-truth crops of the same images (and of all known-type images). --picture writes one
example (image, map, mask and box, type) as a PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lowbit.core.scores import auroc
from lowbit.data import BUILTIN_UNKNOWN, load_whole_images
from lowbit.detect.fit import fit_detector
from lowbit.detect.inspect import inspect
from lowbit.detect.maps import upsample_nearest
from lowbit.detect.metrics import aupro, region_labels
from lowbit.fewshot.predict import predict

log = logging.getLogger("stage1_inspect")

import whole_image_data  # noqa: E402  (benchmarks/, beside this script)


def copy_export(source: Path, target: Path) -> Path:
    """Copies the export folder whole (its manifest lists every file it holds, detectors
    already fitted into it included); the source stays untouched."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def evaluate(export: Path, category: Path) -> tuple[dict, list[dict], object]:
    """Returns (row of numbers, inspect's rows, the test set) for one fitted category."""
    data = load_whole_images(category)
    started = time.perf_counter()
    rows = inspect(export, data.test_images, category=category.name)
    seconds = time.perf_counter() - started
    types = np.array(data.test_types)[data.test_labels]
    good = types == "good"
    known = ~good & ~np.isin(types, BUILTIN_UNKNOWN)
    held_out = np.isin(types, BUILTIN_UNKNOWN)
    scores = np.array([row["score"] for row in rows])
    flagged = np.array([row["anomalous"] for row in rows])
    size = data.test_images[0].shape[:2]
    pixels = upsample_nearest(np.stack([row["map"] for row in rows]), *size)
    masks = np.stack(data.test_masks)
    result = {"texture": category.name, "inspect_ms_per_image": 1000 * seconds / len(rows)}
    for group, members in (("known", known), ("held_out", held_out)):
        result[f"image_auroc_{group}"] = auroc(-scores[good], -scores[members])
        chosen = good | members
        values, truth = pixels[chosen].ravel(), masks[chosen].ravel()
        result[f"pixel_auroc_{group}"] = auroc(-values[~truth], -values[truth])
        result[f"aupro_{group}"] = aupro(pixels[chosen], region_labels(masks[chosen]))
        result[f"flagged_{group}"] = float(flagged[members].mean())
    result["false_alarms_test_good"] = float(flagged[good].mean())
    result["test_good"] = int(good.sum())
    # stage 2: inspect's type on flagged known-type parts; the classifier on ground-truth crops
    labels = np.array([row["type"] or "" for row in rows])
    truth_crops = predict(
        export,
        [data.test_images[i] for i in np.flatnonzero(known)],
        masks=[data.test_masks[i] for i in np.flatnonzero(known)],
    )
    on_truth = np.zeros(len(rows), dtype=bool)
    on_truth[np.flatnonzero(known)] = [
        row["label"] == kind for row, kind in zip(truth_crops, types[known])
    ]
    detected = known & flagged
    result["known_detected"] = int(detected.sum())
    result["type_accuracy_inspect"] = float((labels[detected] == types[detected]).mean())
    result["type_accuracy_truth_crops_same"] = float(on_truth[detected].mean())
    result["type_accuracy_truth_crops_all"] = float(on_truth[known].mean())
    result["held_out_flagged_unknown"] = float((labels[held_out & flagged] == "unknown").mean())
    return result, rows, data


def picture(rows: list[dict], data, path: Path) -> None:
    """Writes image | anomaly map | mask with box | predicted type, of the first flagged
    known-type image whose type inspect names right (a small palette PNG)."""
    types = np.array(data.test_types)[data.test_labels]
    index = next(
        i
        for i, row in enumerate(rows)
        if row["anomalous"] and row["type"] == types[i] and types[i] not in BUILTIN_UNKNOWN
    )
    row, image = rows[index], data.test_images[index]
    height, width = image.shape[:2]
    anomaly = upsample_nearest(row["map"], height, width).astype(np.float64)
    heat = (255 * np.clip(anomaly / max(anomaly.max(), 1), 0, 1)).astype(np.uint8)
    heat = np.stack([heat, heat // 3, 255 - heat], axis=-1)
    overlay = image.copy()
    overlay[row["mask"]] = (0.5 * overlay[row["mask"]] + [127, 0, 0]).astype(np.uint8)
    panels = [Image.fromarray(p) for p in (image, heat, overlay)]
    x0, y0, x1, y1 = row["box"]
    ImageDraw.Draw(panels[2]).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 0))
    canvas = Image.new("RGB", (3 * width + 8, height + 16), (255, 255, 255))
    for k, panel in enumerate(panels):
        canvas.paste(panel, (k * (width + 4), 16))
    verdict = f"score {row['score']} > {row['threshold']}"
    caption = f"{verdict}  type: {row['type']} (true {types[index]})"
    ImageDraw.Draw(canvas).text((2, 2), caption, fill=(0, 0, 0))
    canvas.quantize(colors=64).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, help="comma list of export folders")
    parser.add_argument("--out", type=Path, required=True)
    whole_image_data.add_options(parser)
    parser.add_argument("--picture", type=Path, default=None, help="PNG of the first model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    textures, data_root = whole_image_data.textures_and_data(args, args.out / "data")
    results = []
    for model in (Path(m) for m in args.models.split(",") if m):
        export = copy_export(model, args.out / "exports" / model.name)
        for texture in textures:
            started = time.perf_counter()
            detector = fit_detector(export, data_root / texture, train_good=args.train_good)
            fit_seconds = time.perf_counter() - started
            result, rows, data = evaluate(export, data_root / texture)
            result = {"model": model.name, **result, "fit_seconds": fit_seconds}
            result |= {k: detector[k] for k in ("image_threshold", "pixel_threshold", "bank_size")}
            log.info("%s", result)
            results.append(result)
            if args.picture is not None and len(results) == 1:
                picture(rows, data, args.picture)
    (args.out / "stage1_inspect.json").write_text(json.dumps(results, indent=1))
    print(format_table(results))
    return 0


def format_table(results: list[dict]) -> str:
    """Returns the results as a markdown table (docs/anomaly.md)."""
    header = (
        "| model | texture | image AUROC known / held-out | pixel AUROC known / held-out | "
        "AUPRO known / held-out | false alarms (test good) | flagged known / held-out | "
        "type acc. inspect | type acc. GT crops (same / all) | held-out flagged → unknown |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['texture']} | {r['image_auroc_known']:.3f} / "
            f"{r['image_auroc_held_out']:.3f} | {r['pixel_auroc_known']:.3f} / "
            f"{r['pixel_auroc_held_out']:.3f} | "
            f"{r['aupro_known']:.3f} / {r['aupro_held_out']:.3f} | "
            f"{r['false_alarms_test_good']:.2f} "
            f"({r['test_good']}) | {r['flagged_known']:.2f} / {r['flagged_held_out']:.2f} | "
            f"{r['type_accuracy_inspect']:.2f} ({r['known_detected']}) | "
            f"{r['type_accuracy_truth_crops_same']:.2f} / {r['type_accuracy_truth_crops_all']:.2f}"
            f" | {r['held_out_flagged_unknown']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
