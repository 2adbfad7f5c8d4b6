"""`predict`: class, score and known/unknown per image from an export folder, without torch.

Checks the folder against its manifest, reads model.json and model.int.onnx, runs the integer
runtime, and applies model.json's open-set threshold to the score of the integer graph's logits:
the units it was calibrated in (lowbit.fewshot.openset.integer_calibration).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lowbit.core.feature_scores import FEATURE_TENSOR, load_export_stats
from lowbit.errors import ModelFileError
from lowbit.fewshot.images import load_images
from lowbit.fewshot.openset import ood_score
from lowbit.manifest import DESCRIPTION_FILE, check_export

UNKNOWN = "unknown"


def load_export(export_dir: str | Path) -> tuple[dict, object]:
    """Returns (model.json dict, Runtime of its integer graph); ModelFileError names the file."""
    from lowbit.runtime import Runtime

    export_dir = Path(export_dir)
    path = export_dir / DESCRIPTION_FILE
    if not export_dir.is_dir():
        raise ModelFileError(f"{export_dir}: not a folder; pass an export folder (model.json)")
    check_export(export_dir)
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; run `lowbit export` first")
    try:
        description = json.loads(path.read_text())
        files, size = description["files"], description["model"]["image_size"]
        names = description["class_names"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelFileError(f"{path}: not a lowbit model.json ({error})") from None
    if not isinstance(size, int) or not isinstance(names, list):
        raise ModelFileError(f"{path}: model.image_size or class_names has the wrong type")
    return description, Runtime(export_dir / files["int"])


def needs_features(ood: dict | None) -> bool:
    """True when the deployed score reads the backbone's feature codes."""
    from lowbit.core.scores import is_feature_score

    return is_feature_score((ood or {}).get("score") or "msp")


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
    threshold = ood.get("threshold")
    known = scores >= threshold if threshold is not None else np.ones(len(scores), bool)
    rows = []
    for index, row in enumerate(np.asarray(logits).argmax(axis=1)):
        name = class_names[int(row)]
        rows.append(
            {
                "class": name,
                "score": float(scores[index]),
                "score_name": score_name,
                "known": bool(known[index]),
                "label": name if known[index] else UNKNOWN,
            }
        )
    return rows


def predict(export_dir: str | Path, images: Sequence[str | Path]) -> list[dict]:
    """Returns one dict per image: image, class, score, known, label ('unknown' if rejected)."""
    description, runtime = load_export(export_dir)
    x = load_images(
        images, description["model"]["image_size"], description["input"]["normalization"]
    )
    ood = description.get("ood")
    stats = load_export_stats(export_dir, description) if needs_features(ood) else None
    outputs = runtime.run(x, keep_intermediates=stats is not None)
    features = outputs[FEATURE_TENSOR] if stats is not None else None
    rows = decide(outputs["logits"], description["class_names"], ood, features, stats)
    return [{"image": str(path), **row} for path, row in zip(images, rows)]
