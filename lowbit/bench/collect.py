"""Measurements of one finished configuration: the columns of a bench row besides training.

Each function takes a trained (and, for quantized recipes, exported) run directory and returns a
JSON-ready dict; `lowbit.bench.sweep` assembles them into a row.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np

from lowbit.artifacts import DESCRIPTION_FILE, INT_GRAPH_FILE, deployed_bits_of
from lowbit.core.scores import msp
from lowbit.errors import LowbitError
from lowbit.models import LowbitModel
from lowbit.models.accounting import parameter_bits_by_layer

log = logging.getLogger(__name__)

ROC_POINTS = 200  # enough for a smooth plot, small enough for results.json


def deployed_size(model: LowbitModel, description: dict | None) -> dict:
    """Returns {"total", "weights", "thresholds", "source"}: the deployed model size in bits.

    Quantized: model.json's deployed count (weight codes at their width, thresholds at their
    layer's accumulator width, head rows). fp32 has no export: 32-bit weights, and the BatchNorm
    (slope, offset) floats that thresholds replace in a quantized model count as "thresholds".
    """
    if description is not None:
        rows = deployed_bits_of(description)["layers"]
        weights = sum(row["weight_bits"] for row in rows)
        thresholds = sum(row["threshold_bits"] for row in rows)
        return {
            "total": weights + thresholds,
            "weights": weights,
            "thresholds": thresholds,
            "source": DESCRIPTION_FILE,
        }
    rows = parameter_bits_by_layer(model)
    # BatchNorm modules are named bn, bn1, bn2, bn_sc by the backbones
    batchnorm = sum(r["bits"] for r in rows if r["name"].rsplit(".", 1)[-1].startswith("bn"))
    total = sum(row["bits"] for row in rows)
    return {
        "total": total,
        "weights": total - batchnorm,
        "thresholds": batchnorm,
        "source": "float",
    }


def layer_chart_rows(description: dict) -> list[dict]:
    """Returns per model.json layer {name, weight_bits, act_bits, accumulator_bits, stored_bits}."""
    stored = {row["name"]: row for row in deployed_bits_of(description)["layers"]}
    rows = []
    for layer in description["layers"]:
        bits = stored.get(layer["name"], {})
        rows.append(
            {
                "name": layer["name"],
                "weight_bits": layer.get("weight_bits"),
                "act_bits": layer.get("act_bits"),
                "accumulator_bits": layer.get("accumulator_bits"),
                "stored_bits": bits.get("weight_bits", 0) + bits.get("threshold_bits", 0),
            }
        )
    head = description["head"]
    rows.append(
        {
            "name": "head",
            "weight_bits": head["head_weight_bits"],
            "act_bits": None,
            "accumulator_bits": None,
            "stored_bits": stored.get("head", {}).get("weight_bits", 0),
        }
    )
    return rows


def roc_curve(scores_in: np.ndarray, scores_out: np.ndarray) -> dict:
    """Returns {"fpr": [...], "tpr": [...]} of "in-distribution iff score >= t" over every t.

    Starts at (0, 0) and ends at (1, 1); thinned to about ROC_POINTS points for storage.
    """
    scores_in = np.asarray(scores_in, dtype=np.float64)
    scores_out = np.asarray(scores_out, dtype=np.float64)
    thresholds = np.unique(np.concatenate([scores_in, scores_out]))[::-1]
    sorted_in, sorted_out = np.sort(scores_in), np.sort(scores_out)
    tpr = 1.0 - np.searchsorted(sorted_in, thresholds, side="left") / len(sorted_in)
    fpr = 1.0 - np.searchsorted(sorted_out, thresholds, side="left") / len(sorted_out)
    fpr, tpr = np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
    if len(fpr) > ROC_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"score": "msp", "fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}


def ood_roc(model: LowbitModel, splits) -> dict | None:
    """Returns the MSP ROC curve of test (known) vs OOD (held-out) images; None without OOD."""
    from lowbit.train import predict_logits

    ood = getattr(splits, "ood", None)
    if ood is None or len(ood.x) == 0 or len(splits.test.x) == 0:
        return None
    scores_in = msp(predict_logits(model, splits.test.x))
    scores_out = msp(predict_logits(model, ood.x))
    return roc_curve(scores_in, scores_out)


def latency_ms(export_dir: Path, images: np.ndarray, repeats: int) -> dict:
    """Returns {"1": ms, "64": ms}: median integer-runtime wall time at batch 1 and 64."""
    from lowbit.runtime import Runtime

    runtime = Runtime(export_dir / INT_GRAPH_FILE)
    result = {}
    for batch in (1, 64):
        reps = -(-batch // max(1, len(images)))
        x = np.ascontiguousarray(np.concatenate([images] * reps)[:batch], dtype=np.float32)
        runtime.run(x, batch_size=batch)  # warm-up: first-call allocations
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runtime.run(x, batch_size=batch)
            times.append((time.perf_counter() - start) * 1000.0)
        result[str(batch)] = round(statistics.median(times), 3)
    return result


def fewshot(run_dir: Path, splits, episodes: int, seed: int) -> dict | None:
    """Returns few-shot 1/5-shot accuracy on the run's held-out classes, or None when impossible.

    way = min(5, number of held-out classes), needing at least 2; queries per class =
    min(15, the smallest held-out class's size - 5), needing at least 1.
    """
    unknown_names = list(getattr(splits, "unknown_names", []) or [])
    ood_types = np.asarray(getattr(splits, "ood_types", np.zeros(0)))  # index of unknown_names
    way = min(5, len(unknown_names))
    smallest = min((int(np.sum(ood_types == j)) for j in range(len(unknown_names))), default=0)
    queries = min(15, smallest - 5)
    if way < 2 or queries < 1:
        log.warning(
            "%s: few-shot needs >= 2 held-out classes of >= 6 images (%d classes, smallest %d)",
            run_dir,
            len(unknown_names),
            smallest,
        )
        return None
    try:
        from lowbit.fewshot import evaluate_fewshot
    except ImportError:
        log.warning("lowbit.fewshot.evaluate_fewshot is not available: few-shot column left null")
        return None
    try:
        result = evaluate_fewshot(
            run_dir, way=way, shots=(1, 5), queries=queries, episodes=episodes, seed=seed
        )
    except LowbitError as error:
        log.warning("%s: few-shot evaluation failed: %s", run_dir, error)
        return None
    imprint = result["results"]["imprint"]
    return {
        "way": result.get("way", way),
        "novel_classes": list(result.get("novel_classes", unknown_names)),
        "episodes": episodes,
        "queries": queries,
        "method": "imprint",
        "shots": {shot: imprint[shot] for shot in ("1", "5") if shot in imprint},
    }
