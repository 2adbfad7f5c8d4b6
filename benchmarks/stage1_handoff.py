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
- `ground truth`: the mask's own box (the classifier's ceiling);
and rules that try several boxes and keep the decision whose deployed unknown-type score is
highest (the crop that looks most like a known defect):
- `around`: inspect's box, moved by one map cell (stride px) left, right, up or down, grown and
  shrunk by one cell a side (7 boxes);
- `best of rules`: the first five rules above (5 boxes), ties to the first in inspect's order
  (`HANDOFF_BOXES`: region - halo first): inspect's rule;
- `best of all`: both sets (11 distinct rules).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from lowbit.data import BUILTIN_CLASSES, BUILTIN_UNKNOWN, load_whole_images, make_whole_images
from lowbit.detect.inspect import (
    HANDOFF_BOXES,
    best_decisions,
    candidate_boxes,
    inspect,
    shrink_box,
)
from lowbit.fewshot.predict import predict
from lowbit.fewshot.regions import region_box

log = logging.getLogger("stage1_handoff")


def boxes_by_rule(row: dict, detector: dict, truth: np.ndarray) -> dict[str, list[int]]:
    """Returns each rule's box for one flagged image: inspect's candidates, then the truth."""
    height, width = truth.shape
    boxes = candidate_boxes(
        row["map"],
        detector["pixel_threshold"],
        detector["image_threshold"],
        height,
        width,
        detector["aggregate"] // 2,
    )
    return {**boxes, "ground truth": region_box(truth)}


def around(box: list[int], step: int, height: int, width: int) -> dict[str, list[int]]:
    """Returns inspect's box moved by one cell each way, grown and shrunk by one cell a side,
    clipped to the image (a shrink that would empty a side keeps it)."""
    x0, y0, x1, y1 = box

    def clip(b: list[int]) -> list[int]:
        return [max(0, b[0]), max(0, b[1]), min(width, b[2]), min(height, b[3])]

    return {
        "around: left": clip([x0 - step, y0, x1 - step, y1]),
        "around: right": clip([x0 + step, y0, x1 + step, y1]),
        "around: up": clip([x0, y0 - step, x1, y1 - step]),
        "around: down": clip([x0, y0 + step, x1, y1 + step]),
        "around: grown": clip([x0 - step, y0 - step, x1 + step, y1 + step]),
        "around: shrunk": shrink_box(box, step, step),
    }


SEARCHES = {
    "around": ["region - halo", *(f"around: {w}" for w in ("left", "right", "up", "down"))]
    + ["around: grown", "around: shrunk"],
    "best of rules": list(HANDOFF_BOXES),  # inspect's rule
}
SEARCHES["best of all"] = list(dict.fromkeys(SEARCHES["around"] + SEARCHES["best of rules"]))


def best_by_score(decisions: dict[str, list[dict]], rules: list[str]) -> list[dict]:
    """Returns per image the decision of the rule with the highest deployed score (the first
    in `rules` order on ties), by inspect's own choice (`best_decisions`)."""
    count = len(decisions[rules[0]])
    flat = [decisions[rule][i] for i in range(count) for rule in rules]
    best = best_decisions(flat, [i for i in range(count) for _ in rules])
    return [flat[best[i]] for i in range(count)]


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
            rules = []
            for i in flagged:
                boxes = boxes_by_rule(rows[i], detector, data.test_masks[i])
                stride = data.test_masks[i].shape[0] // rows[i]["map"].shape[0]
                boxes.update(around(boxes["region - halo"], stride, *data.test_masks[i].shape))
                rules.append(boxes)
            result = {"model": export.name, "texture": texture, "flagged": len(flagged)}
            result["images"] = len(rows)
            decisions = {}
            for rule in rules[0]:
                decisions[rule] = predict(
                    export,
                    [data.test_images[i] for i in flagged],
                    boxes=[boxes[rule] for boxes in rules],
                )
            for search, members in SEARCHES.items():
                decisions[search] = best_by_score(decisions, members)
            inspected = [(rows[i]["type"], rows[i]["confidence"]) for i in flagged]
            chosen = [(d["label"], d["score"]) for d in decisions["best of rules"]]
            if inspected != chosen:  # the benchmark's rule must be inspect's
                raise SystemExit(f"{export.name}/{texture}: inspect decided otherwise")
            for rule, chosen in decisions.items():
                correct = [d["label"] == types[i] for d, i in zip(chosen, flagged)]
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
