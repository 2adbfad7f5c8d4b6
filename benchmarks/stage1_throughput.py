"""Two-stage inspection vs both stages on every part, on a stream of mostly good parts.

    python benchmarks/stage1_throughput.py --export runs/.../w2a2 --out runs/stage1_throughput

The stream: --parts whole images of one built-in texture (lowbit/data/whole.py's test images,
generated as make_whole_images(seed) writes them), --good-share of them from test/good, the
rest from test/<type> cycling over every built-in type, shuffled by --seed. One part at a time,
with the export and detector loaded once (lowbit.detect.inspect.Inspector):
- two-stage: `Inspector.run` (stage 1 on every part, the classifier only on flagged parts);
- both stages on every part: stage 1, then stage 2 as inspect runs it on a flagged part (the
  classifier on every distinct candidate box, the best decision kept) on every part; a part
  below the threshold gets the candidate boxes of a threshold just under its map's maximum.
Each part goes through both pipelines back to back, the order alternating part by part, for
--repeats passes over the stream (same images, same process state); stream times are medians
over the passes, per-part times medians over passes then means over parts. Stage 1 and stage 2
are also timed on their own (stage 1: trunk, map, score and box; stage 2: crop, classifier,
decision). The export is copied, and a detector for the texture is fitted into the copy with
`lowbit detect fit`'s defaults, unless the export (only read) already has one.
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

from lowbit.data import BUILTIN_CLASSES
from lowbit.data.whole import generate_whole_image, whole_image_rng
from lowbit.detect.fit import fit_detector
from lowbit.detect.inspect import Inspector, best_decisions, candidate_boxes, read_whole_images
from lowbit.detect.store import fitted_categories


def stream(texture: str, parts: int, good_share: float, size: int, seed: int):
    """Returns (images, is_good) of the shuffled stream."""
    good = round(good_share * parts)
    images, is_good = [], []
    for index in range(parts):
        defect = None if index < good else BUILTIN_CLASSES[(index - good) % len(BUILTIN_CLASSES)]
        number = index if defect is None else (index - good) // len(BUILTIN_CLASSES)
        rng = whole_image_rng(seed, texture, f"test/{defect or 'good'}", number)
        images.append(generate_whole_image(rng, texture, defect, size)[0])
        is_good.append(defect is None)
    order = np.random.default_rng(seed).permutation(parts)
    return [images[i] for i in order], np.array(is_good)[order]


def stage1(inspector: Inspector, image: np.ndarray) -> tuple[bool, list[list[int]]]:
    """Returns (anomalous, candidate boxes) of one part: stage 1, and the distinct boxes stage 2
    tries (`candidate_boxes`) even below the threshold (then those of a threshold just under
    the map's maximum)."""
    detector = inspector.detector
    height, width = detector["image_size"]
    pixels = read_whole_images([image], (height, width))
    maps, scores = inspector.stage1(pixels)
    anomaly, halo = maps[0], detector["aggregate"] // 2
    image_threshold, pixel_threshold = detector["image_threshold"], detector["pixel_threshold"]
    peak = int(anomaly.max())
    if peak <= image_threshold:
        image_threshold, pixel_threshold = peak - 1, min(pixel_threshold, peak - 1)
    boxes = candidate_boxes(anomaly, pixel_threshold, image_threshold, height, width, halo)
    return bool(scores[0] > detector["image_threshold"]), [
        list(box) for box in dict.fromkeys(map(tuple, boxes.values()))
    ]


def both_stages(inspector: Inspector, image: np.ndarray) -> tuple[float, float]:
    """Runs stage 1 and stage 2 (as inspect runs it on a flagged part: every candidate box,
    the best decision kept) on one part; returns (stage 1 s, stage 2 s)."""
    begin = time.perf_counter()
    _, boxes = stage1(inspector, image)
    middle = time.perf_counter()
    if inspector.crop is None:
        inspector.classifier.predict([image])
    else:
        decisions = inspector.classifier.predict([image] * len(boxes), boxes=boxes)
        best_decisions(decisions, [0] * len(boxes))
    return middle - begin, time.perf_counter() - middle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="export folder (read only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--texture", default="brick")
    parser.add_argument("--parts", type=int, default=100)
    parser.add_argument("--good-share", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    export = args.export if args.texture in fitted_categories(args.export) else args.out / "export"
    if args.texture not in fitted_categories(export):
        shutil.copytree(args.export, export, dirs_exist_ok=True)  # its manifest lists every file
        fit_detector(export, category=args.texture)
    inspector = Inspector(export, args.texture)
    size = inspector.detector["image_size"][0]
    images, is_good = stream(args.texture, args.parts, args.good_share, size, args.seed)
    inspector.run(images[:2])  # warm: allocator, first-call costs
    two_stage = np.zeros((args.repeats, args.parts))
    every_part = np.zeros((args.repeats, args.parts))
    stage_times = np.zeros((args.repeats, args.parts, 2))
    flagged = np.zeros(args.parts, bool)
    for repeat in range(args.repeats):
        for index, image in enumerate(images):
            for pipeline in ("two", "both") if index % 2 == 0 else ("both", "two"):
                begin = time.perf_counter()
                if pipeline == "two":
                    flagged[index] = inspector.run([image])[0]["anomalous"]
                    two_stage[repeat, index] = time.perf_counter() - begin
                else:
                    stage_times[repeat, index] = both_stages(inspector, image)
                    every_part[repeat, index] = time.perf_counter() - begin
    two_total = float(np.median(two_stage.sum(axis=1)))
    every_total = float(np.median(every_part.sum(axis=1)))
    per_part_two = np.median(two_stage, axis=0)
    stage1_ms = 1000 * float(np.median(stage_times[..., 0]))
    stage2_ms = 1000 * float(np.median(stage_times[..., 1]))
    share = float(flagged.mean())
    # (t1 + t2) / (t1 + f t2) >= 3 needs t2 >= 2 t1 / (1 - 3 f), for a flagged share f < 1/3
    needed = 2 * stage1_ms / (1 - 3 * share) if share < 1 / 3 else None
    result = {
        "export": str(args.export),
        "texture": args.texture,
        "parts": args.parts,
        "good_parts": int(is_good.sum()),
        "repeats": args.repeats,
        "flagged_share": share,
        "flagged_good": int(flagged[is_good].sum()),
        "flagged_defective": int(flagged[~is_good].sum()),
        "two_stage_s": two_total,
        "every_part_s": every_total,
        "speedup": every_total / two_total,
        "two_stage_ms_per_good_part": 1000 * float(per_part_two[is_good].mean()),
        "two_stage_ms_per_defective_part": 1000 * float(per_part_two[~is_good].mean()),
        "stage1_ms": stage1_ms,
        "stage2_ms": stage2_ms,
        "stage2_ms_needed_for_3x": needed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stage1_throughput.json").write_text(json.dumps(result, indent=1))
    print(f"{args.parts} parts of {args.texture}, {result['good_parts']} good, {share:.0%} "
          f"flagged ({result['flagged_good']} good, {result['flagged_defective']} defective); "
          f"medians of {args.repeats} passes")  # fmt: skip
    print(f"two-stage (stage 2 on flagged parts only): {two_total:.2f} s")
    print(f"both stages on every part:                 {every_total:.2f} s")
    print(f"ratio (every part / two-stage):            {result['speedup']:.2f}x")
    print(f"two-stage per part: good {result['two_stage_ms_per_good_part']:.1f} ms, "
          f"defective {result['two_stage_ms_per_defective_part']:.1f} ms")  # fmt: skip
    print(f"stage 1 alone {stage1_ms:.1f} ms per part; stage 2 alone {stage2_ms:.2f} ms per part")
    if needed is not None:
        print(f"3x would need stage 2 >= {needed:.0f} ms per part at this stage 1 and flag rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
