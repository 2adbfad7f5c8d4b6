"""`predict`: class, score and known/unknown per image from an export folder, without torch.

Checks the folder against its manifest, reads model.json and model.int.onnx, cuts each image
around the defect a detector found (its mask or box) exactly as the training images were cut
(model.json `input.crop`), runs the integer runtime, and applies model.json's open-set
threshold to the deployed score of the integer graph's outputs: the units it was calibrated in
(lowbit.fewshot.openset.integer_calibration). A model trained on crops is never given a whole
image unless the caller says the images already are crops (`whole_image`): a whole image would
be classified, wrongly, without a word."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lowbit.artifacts import DESCRIPTION_FILE
from lowbit.core.feature_scores import FEATURE_TENSOR, load_export_stats
from lowbit.core.scores import detector_name, ood_views
from lowbit.data.preprocess import crop_rule_of
from lowbit.errors import ConfigError
from lowbit.fewshot.images import image_name, load_crops
from lowbit.fewshot.openset import ood_score
from lowbit.fewshot.regions import Region, regions_for
from lowbit.manifest import read_description
from lowbit.tables import format_table

UNKNOWN = "unknown"


def load_export(export_dir: str | Path) -> tuple[dict, object]:
    """Returns (model.json dict, Runtime of its integer graph); ModelFileError names the file."""
    from lowbit.runtime import Runtime

    description = read_description(export_dir)
    return description, Runtime(Path(export_dir) / description["files"]["int"])


def needs_features(ood: dict | None) -> bool:
    """True when the deployed score reads the backbone's feature codes."""
    from lowbit.core.scores import is_feature_score

    return is_feature_score((ood or {}).get("score") or "msp")


def export_views(description: dict, export_dir: str | Path) -> int:
    """Returns model.json's "ood" view count; ModelFileError naming the file when malformed."""
    from lowbit.core.scores import ood_detector
    from lowbit.errors import ModelFileError

    try:
        return ood_detector(description.get("ood"))[1]
    except ValueError as error:
        raise ModelFileError(f"{Path(export_dir) / DESCRIPTION_FILE}: {error}") from None


def run_views(runtime, x: np.ndarray, views: int, features: bool) -> tuple:
    """Returns (logits of the images, feature codes summed over `views` dihedral views, or None
    without `features`) from one runtime call on the views stacked into one batch."""
    from lowbit.core.views import stack_views, sum_views

    if not features:
        return runtime.run(x)["logits"], None
    outputs = runtime.run(stack_views(x, views), outputs=[FEATURE_TENSOR])
    return outputs["logits"][: len(x)], sum_views(outputs[FEATURE_TENSOR], views)


def decide(
    logits: np.ndarray,
    class_names: Sequence[str],
    ood: dict | None,
    features: np.ndarray | None = None,
    stats: dict | None = None,
) -> list[dict]:
    """Returns per row: class (argmax), score, known (score >= threshold) and label."""
    ood = ood or {}
    score_name = ood.get("score") or "msp"
    scores = ood_score(logits, score_name, features, stats)
    views = ood_views(ood)  # the caller summed the features over them
    threshold = ood.get("threshold")
    known = scores >= threshold if threshold is not None else np.ones(len(scores), bool)
    rows = []
    for index, row in enumerate(np.asarray(logits).argmax(axis=1)):
        name = class_names[int(row)]
        rows.append(
            {
                "class": name,
                "score": float(scores[index]),
                "score_name": detector_name(score_name, views),
                "known": bool(known[index]),
                "label": name if known[index] else UNKNOWN,
            }
        )
    return rows


def check_regions(
    crop: dict | None, regions: Sequence[Region], whole_image: bool, where: Path
) -> None:
    """ConfigError unless the regions fit the model: crops need a mask or box per image (or
    `whole_image`: the images already are crops), a model of whole images takes neither."""
    located = any(region.mask is not None or region.box is not None for region in regions)
    if whole_image and located:
        raise ConfigError("--whole-image takes each image whole: drop --mask/--box, or the flag")
    if crop is None and located:
        raise ConfigError(
            f"{where}: this model was trained on whole images, not on crops around a mask; "
            "give the images without --mask/--box"
        )
    if crop is not None and not located and not whole_image:
        raise ConfigError(
            f"{where}: this model was trained on crops around each defect's mask; give the "
            "detector's --mask or --box for every image, or --whole-image if the images "
            "already are such crops"
        )


class Classifier:
    """An export loaded once for many `predict` calls: model.json, the runtime, the statistics
    of the deployed score (stage 2 of `inspect`, which calls it once per batch of parts)."""

    def __init__(self, export_dir: str | Path) -> None:
        self.export_dir = Path(export_dir)
        self.description, self.runtime = load_export(export_dir)
        self.crop = crop_rule_of(self.description)
        self.ood = self.description.get("ood")
        self.stats = (
            load_export_stats(export_dir, self.description) if needs_features(self.ood) else None
        )
        self.views = export_views(self.description, export_dir)

    def predict(
        self,
        images: Sequence[str | Path | np.ndarray],
        *,
        masks: Sequence[str | Path | np.ndarray] | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        whole_image: bool = False,
    ) -> list[dict]:
        """Returns `predict`'s rows for these images (see `predict`)."""
        description, crop = self.description, self.crop
        regions = regions_for(len(images), masks, boxes)
        check_regions(crop, regions, whole_image, self.export_dir / DESCRIPTION_FILE)
        x, defect_boxes = load_crops(
            images,
            regions,
            description["model"]["image_size"],
            description["input"]["normalization"],
            None if whole_image else crop,
        )
        stats = self.stats
        logits, features = run_views(self.runtime, x, self.views, stats is not None)
        rows = decide(logits, description["class_names"], self.ood, features, stats)
        return [
            {
                "image": image_name(image, index),
                "mask": str(region.mask) if isinstance(region.mask, Path) else None,
                "box": box,
                **row,
            }
            for index, (image, region, box, row) in enumerate(
                zip(images, regions, defect_boxes, rows)
            )
        ]


def predict(
    export_dir: str | Path,
    images: Sequence[str | Path | np.ndarray],
    *,
    masks: Sequence[str | Path | np.ndarray] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    whole_image: bool = False,
) -> list[dict]:
    """Returns per image: image, mask, box, class, score, score_name, known, label
    (score_name: the deployed detector, e.g. "rel_mahalanobis@8views").

    `images`: files or uint8 [H, W, 3] arrays; `masks` (files or bool [H, W] arrays) or
    `boxes` ((x0, y0, x1, y1) in pixels, end-exclusive), one per image, locate each defect
    (lowbit.fewshot.regions). `box` in the result is the defect's box in the image (a mask's
    bounding box); `label` is the class, or 'unknown' when the deployed score rejects it.
    """
    return Classifier(export_dir).predict(images, masks=masks, boxes=boxes, whole_image=whole_image)


def format_predictions(rows: Sequence[dict]) -> str:
    """Returns `predict`'s rows as a table with a header (the score's name in its heading)."""
    score_name = rows[0]["score_name"] if rows else "score"
    header = ["image", "mask", "box", "label", "class", f"score ({score_name})", "known"]
    table = [
        [
            row["image"],
            row["mask"] or "-",
            ",".join(map(str, row["box"])) if row["box"] else "whole image",
            row["label"],
            row["class"],
            f"{row['score']:.4f}",
            "yes" if row["known"] else "no",
        ]
        for row in rows
    ]
    return format_table(header, table, align="lllllr")
