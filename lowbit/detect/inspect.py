"""`inspect`: stage 1 on whole images, then stage 2 on the parts it flags.

Per image: the integer anomaly map (the fitted trunk layer's codes, k x k sums, squared
distance to the bank), the score (the map's maximum), `anomalous` = score > image threshold.
For an anomalous image the mask is the map's cells above the pixel threshold, repeated to image
size (nearest); the box is the bounding box of the mask's largest 4-connected region, moved in
by the aggregation's halo (k // 2 cells, `shrink_box`). Stage 2 tries that box and the boxes
of four more rules read off the same map (`candidate_boxes`), each through
`lowbit.fewshot.predict`: the crop is cut by the very rule the training crops were cut by (a box
stands for its filled mask, and the rule reads only a mask's bounding box). The part's decision
is the one whose deployed unknown-type score is highest (the crop that looks most like a known
defect; type, or "unknown" by the deployed score), and its box is the part's box. Both rules
were chosen on validation images of known types (docs/anomaly.md).
A part below the threshold gets no mask, no box and no stage 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lowbit.data.preprocess import crop_box, crop_rule_of
from lowbit.detect.fit import load_trunk, whole_image_codes
from lowbit.detect.maps import label_regions, largest_region, upsample_nearest
from lowbit.detect.memory_bank import anomaly_map, image_scores
from lowbit.detect.store import choose_category, read_detector, trunk_fingerprint
from lowbit.errors import ConfigError, DataError, ModelFileError
from lowbit.fewshot.images import image_name
from lowbit.fewshot.predict import Classifier
from lowbit.fewshot.regions import Region, read_region, region_box
from lowbit.manifest import read_description

# fields of one row of `inspect`'s JSON (docs/anomaly.md), in order
JSON_FIELDS = (
    "image",
    "category",
    "anomalous",
    "score",
    "threshold",
    "box",
    "crop",
    "mask",
    "type",
    "class",
    "known",
    "confidence",
    "confidence_name",
)
STAGE2_FIELDS = ("type", "class", "known", "confidence", "confidence_name")
# the boxes stage 2 tries on a flagged part, in this order (ties keep the first);
# `candidate_boxes` says what each is
HANDOFF_BOXES = (
    "region - halo",
    "region",
    "image threshold",
    "peak region - halo",
    "peak half - halo",
)


def read_whole_images(
    images: Sequence[str | Path | np.ndarray], size: Sequence[int]
) -> list[np.ndarray]:
    """Returns uint8 [H, W, 3] images of the detector's size; DataError names a bad one."""
    if not images:
        raise ConfigError("no images given: pass one or more image files")
    pixels = []
    for index, image in enumerate(images):
        name = image_name(image, index)
        if not isinstance(image, np.ndarray):
            image = Path(image)
            if image.is_dir():
                raise DataError(f"{image}: is a folder; pass image files (e.g. {image}/*.png)")
        array, _ = read_region(image, Region(), name)
        if list(array.shape[:2]) != list(size):
            raise DataError(
                f"{name}: {array.shape[1]}x{array.shape[0]}, but the detector was fitted on "
                f"{size[1]}x{size[0]} images; give images of that size"
            )
        pixels.append(array)
    return pixels


def locate(
    anomaly: np.ndarray, pixel_threshold: int, height: int, width: int, halo: int = 0
) -> tuple[np.ndarray, list[int] | None]:
    """Returns (bool mask [H, W], box [x0, y0, x1, y1] or None) of one map [h, w]: the cells
    above the threshold, and the bounding box of their largest 4-connected region less `halo`
    cells on each side (`shrink_box`)."""
    cells = anomaly > pixel_threshold
    region = largest_region(cells)
    mask = upsample_nearest(cells, height, width)
    if region is None:
        return mask, None
    box = region_box(upsample_nearest(region, height, width))
    h, w = anomaly.shape
    return mask, shrink_box(box, halo * (width // w), halo * (height // h))


def candidate_boxes(
    anomaly: np.ndarray,
    pixel_threshold: int,
    image_threshold: int,
    height: int,
    width: int,
    halo: int = 0,
) -> dict[str, list[int]]:
    """Returns the HANDOFF_BOXES of one flagged map [h, w] (its maximum above image_threshold),
    each [x0, y0, x1, y1] in pixels:
    - `region`: the bounding box of the largest 4-connected region of cells above the pixel
      threshold; `region - halo`: that box moved in by `halo` cells a side (`locate`'s box);
    - `image threshold`: the largest region of cells above the image threshold;
    - `peak region - halo`: the region above the pixel threshold that holds the map's maximum
      (the first maximum in raster order), less the halo;
    - `peak half - halo`: within that region, the cells connected to the maximum and at least
      halfway (integer floor) from the pixel threshold to it, less the halo.
    """
    h, w = anomaly.shape
    dx, dy = halo * (width // w), halo * (height // h)

    def box(cells: np.ndarray) -> list[int]:
        return region_box(upsample_nearest(cells, height, width))

    above = anomaly > pixel_threshold
    peak = np.unravel_index(int(np.argmax(anomaly)), anomaly.shape)
    if not anomaly[peak] > image_threshold:
        raise ValueError(f"map maximum {anomaly[peak]} is not above {image_threshold}")
    labels, _ = label_regions(above)
    peak_region = labels == labels[peak]
    half = (int(pixel_threshold) + int(anomaly[peak])) // 2
    half_labels, _ = label_regions(peak_region & (anomaly >= half))
    region = box(largest_region(above))
    boxes = {
        "region - halo": shrink_box(region, dx, dy),
        "region": region,
        "image threshold": box(largest_region(anomaly > image_threshold)),
        "peak region - halo": shrink_box(box(peak_region), dx, dy),
        "peak half - halo": shrink_box(box(half_labels == half_labels[peak]), dx, dy),
    }
    return {name: boxes[name] for name in HANDOFF_BOXES}


def best_decisions(decisions: Sequence[dict], owners: Sequence[int]) -> dict[int, int]:
    """Returns {owner: index of its decision with the highest score}; `owners[i]` is the part
    decision i belongs to; ties keep the first."""
    best: dict[int, int] = {}
    for index, (owner, decision) in enumerate(zip(owners, decisions)):
        if owner not in best or decision["score"] > decisions[best[owner]]["score"]:
            best[owner] = index
    return best


def shrink_box(box: list[int], dx: int, dy: int) -> list[int]:
    """Returns the box moved in by dx px on the left and right, dy px on top and bottom; a side
    no longer than twice its margin is kept.

    k x k aggregation (k = 2 halo + 1) spreads a patch's anomaly over the cells within `halo`
    of it, so the region above threshold is the defect's cells grown by `halo` on every side;
    moving the box in by the halo's pixels undoes that growth (a filled box of the defect's
    cells, aggregated, gives exactly that box back: tests/detect/test_inspect.py).
    """
    x0, y0, x1, y1 = box
    if x1 - x0 > 2 * dx:
        x0, x1 = x0 + dx, x1 - dx
    if y1 - y0 > 2 * dy:
        y0, y1 = y0 + dy, y1 - dy
    return [x0, y0, x1, y1]


def crop_square(box: list[int], shape: tuple[int, int], crop: dict | None) -> list[int] | None:
    """Returns [x0, y0, x1, y1] of the square the classifier's input is cut from (it may
    reach past the border, mirrored there); None for a model of whole images."""
    if crop is None:
        return None
    x0, y0, x1, y1 = box
    top, left, side = crop_box((y0, x0, y1, x1), shape, **crop)
    return [left, top, left + side, top + side]


class Inspector:
    """One export and one category's detector loaded once: `run` inspects batches of parts
    (what `inspect` does per call, without reading the files again)."""

    def __init__(self, export_dir: str | Path, category: str | None = None) -> None:
        from lowbit.runtime import Runtime

        export_dir = Path(export_dir)
        description = read_description(export_dir)
        self.category = choose_category(export_dir, category)
        self.detector, self.bank = read_detector(export_dir, self.category)
        height, width = self.detector["image_size"]
        trunk = load_trunk(export_dir, description, self.detector["layer"], height, width)
        if trunk_fingerprint(trunk) != self.detector["trunk_sha256"]:
            raise ModelFileError(
                f"{export_dir}: the classifier's trunk differs from the one "
                f"detector/{self.category} was fitted on; fit the detector again "
                "(lowbit detect fit)"
            )
        self.runtime = Runtime(trunk)
        self.normalization = description["input"].get("normalization") or None
        self.crop = crop_rule_of(description)
        self.classifier = Classifier(export_dir)

    def stage1(self, pixels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (int64 maps [N, h, w], int64 scores [N]) of uint8 [H, W, 3] images."""
        layer, k = self.detector["layer"], self.detector["aggregate"]
        codes = whole_image_codes(self.runtime, layer, np.stack(pixels), self.normalization, k)
        maps = anomaly_map(self.bank, codes, tuple(self.detector["code_range"]))
        return maps, image_scores(maps)

    def run(self, images: Sequence[str | Path | np.ndarray]) -> list[dict]:
        """Returns `inspect`'s rows of these images (see `inspect`)."""
        detector = self.detector
        height, width = detector["image_size"]
        pixels = read_whole_images(images, (height, width))
        maps, scores = self.stage1(pixels)
        rows, candidates = [], {}  # candidates: {flagged part: its candidate boxes}
        for index, (image, anomaly, score) in enumerate(zip(images, maps, scores)):
            anomalous = bool(score > detector["image_threshold"])
            mask, box = np.zeros((height, width), bool), None
            if anomalous:
                mask = upsample_nearest(anomaly > detector["pixel_threshold"], height, width)
                candidates[index] = candidate_boxes(
                    anomaly,
                    detector["pixel_threshold"],
                    detector["image_threshold"],
                    height,
                    width,
                    detector["aggregate"] // 2,
                )
                box = candidates[index]["region - halo"]  # `locate`'s box
            rows.append(
                {
                    "image": image_name(image, index),
                    "category": self.category,
                    "anomalous": anomalous,
                    "score": int(score),
                    "threshold": detector["image_threshold"],
                    "map": anomaly,
                    "mask": mask,
                    "box": box,
                    "crop": None,  # a crop classifier's: the square of the box stage 2 keeps
                    **dict.fromkeys(STAGE2_FIELDS),
                }
            )
        if not candidates:
            return rows
        owners, boxes = list(candidates), None
        if self.crop is not None:  # every distinct candidate box of every flagged part
            owners, boxes = [], []
            for i, named in candidates.items():
                for box in dict.fromkeys(map(tuple, named.values())):
                    owners.append(i)
                    boxes.append(list(box))
        decisions = self.classifier.predict([pixels[i] for i in owners], boxes=boxes)
        for i, index in best_decisions(decisions, owners).items():
            decision = decisions[index]
            if boxes is not None:
                rows[i]["box"] = boxes[index]
                rows[i]["crop"] = crop_square(boxes[index], (height, width), self.crop)
            rows[i].update(
                type=decision["label"],
                **{"class": decision["class"]},
                known=decision["known"],
                confidence=decision["score"],
                confidence_name=decision["score_name"],
            )
        return rows


def inspect(
    export_dir: str | Path,
    images: Sequence[str | Path | np.ndarray],
    *,
    category: str | None = None,
) -> list[dict]:
    """Returns per image: image, category, anomalous, score, threshold (ints), map (int64
    [h, w]), mask (bool [H, W]), box (the candidate box stage 2 decided on) and crop
    ([x0, y0, x1, y1] or None), and for an anomalous image predict's decision on that box: type
    (class or "unknown"), class, known, confidence (the deployed score, the highest of the
    candidates') and confidence_name; these are None for a part below the threshold.
    """
    return Inspector(export_dir, category).run(images)


def json_row(row: dict, mask_path: str | None = None) -> dict:
    """Returns one `inspect` row as JSON: JSON_FIELDS, the mask as the path it was written to."""
    return {field: mask_path if field == "mask" else row[field] for field in JSON_FIELDS}


def format_row(row: dict) -> str:
    """Returns one line: image, verdict with score/threshold, and the type of a flagged part."""
    verdict = f"{row['score']} {'>' if row['anomalous'] else '<='} {row['threshold']}"
    if not row["anomalous"]:
        return f"{row['image']}: good ({verdict})"
    box = ",".join(map(str, row["box"]))
    return (
        f"{row['image']}: anomalous ({verdict}) box {box} -> {row['type']} "
        f"({row['confidence_name']} {row['confidence']:.4f})"
    )


def write_masks(rows: Sequence[dict], folder: str | Path) -> list[str]:
    """Writes each row's mask as NNN_<image stem>_mask.png (0/255), atomically; returns paths."""
    from io import BytesIO

    from PIL import Image

    from lowbit.io import atomic_write_bytes

    paths = []
    for index, row in enumerate(rows):
        stem = Path(row["image"]).stem if not row["image"].startswith("array[") else "array"
        buffer = BytesIO()
        Image.fromarray(row["mask"].astype(np.uint8) * 255).save(buffer, format="PNG")
        path = Path(folder) / f"{index:03d}_{stem}_mask.png"
        paths.append(str(atomic_write_bytes(path, buffer.getvalue())))
    return paths
