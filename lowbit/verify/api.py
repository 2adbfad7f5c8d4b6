"""verify_export: run the same inputs through four executors and compare every code exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from lowbit.artifacts import GRAPH_FILES, VERIFY_FILE, load_onnx
from lowbit.core.feature_scores import FEATURE_TENSOR, load_export_stats
from lowbit.errors import ModelFileError
from lowbit.io import atomic_write_json
from lowbit.manifest import read_description
from lowbit.models.build import LowbitModel
from lowbit.verify.boundary import boundary_inputs, threshold_hits, threshold_layers
from lowbit.verify.capture import QcdqWitness, qonnx_codes, runtime_codes, torch_codes
from lowbit.verify.compare import (
    SCORE_ROUNDING,
    compare_codes,
    compare_decisions,
    compare_tail,
    tail_tolerance,
)
from lowbit.verify.inputs import random_inputs, tie_inputs
from lowbit.verify.summation import (
    conv_sources,
    element_bounds,
    linear_head,
    linear_tail_tolerance,
)

log = logging.getLogger(__name__)
EXECUTORS = ("runtime", "qcdq", "qonnx")


SAFE_DOMAINS = ("", "ai.onnx", "qonnx.custom_op.general", "onnx.brevitas")
"""Node domains a witness may run. qonnx's executor imports a Python module named by a node's
domain, so a graph with any other domain could run code from the file's say-so."""


def load_graph(path: Path) -> onnx.ModelProto:
    """The checked graph at `path`: self-contained, standard or qonnx ops only."""
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; run `lowbit export` first")
    model = load_onnx(path)
    for node in model.graph.node:
        if node.domain not in SAFE_DOMAINS:
            raise ModelFileError(
                f"{path}: node '{node.name or node.output[0]}' ({node.op_type}) has domain "
                f"'{node.domain}'; only standard ONNX and qonnx ops are run"
            )
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelFileError(f"{path}: initializer '{tensor.name}' keeps external data")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        message = str(error).strip().splitlines()[0]
        raise ModelFileError(f"{path}: ONNX checker: {message}") from None
    return model


def build_inputs(
    description: dict,
    real: np.ndarray | None,
    *,
    n: int,
    random: int,
    ties: bool,
    seed: int,
    int_graph: onnx.ModelProto | None = None,
) -> dict[str, np.ndarray]:
    """Returns named input sets: real (first n), random, ties, boundary.

    With `ties`: images on the input quantizer's rounding ties, and (given the integer graph)
    images whose first conv accumulator sits exactly on a requantization threshold.
    """
    size = description["model"]["image_size"]
    sets = {}
    if real is not None and n > 0:
        sets["real"] = real[:n].astype(np.float32)
    if random > 0:
        sets["random"] = random_inputs(
            random, size, max_abs=description["model"]["input_max_abs"], seed=seed
        )
    if ties:
        tie_count = max(64, random // 4)
        sets["ties"] = tie_inputs(
            tie_count,
            size,
            input_scale=description["input"]["input_scale"],
            input_bits=description["input"]["input_bits"],
            seed=seed + 1,
        )
        start = sets.get("real", sets.get("random"))
        if int_graph is not None and start is not None:
            boundary, _ = boundary_inputs(
                int_graph,
                start,
                count=tie_count,
                input_scale=description["input"]["input_scale"],
                input_bits=description["input"]["input_bits"],
                seed=seed + 2,
            )
            if len(boundary):
                sets["boundary"] = boundary
    return sets


def verify_export(
    model: LowbitModel,
    export_dir: str | Path,
    inputs: dict[str, np.ndarray],
    *,
    executors: tuple[str, ...] = EXECUTORS,
    batch_size: int = 250,
    progress: bool = True,
    write: bool = True,
) -> dict:
    """Compares codes of every quantized tensor across executors; writes verify.json."""
    from lowbit.runtime import Runtime

    export_dir = Path(export_dir)
    description = read_description(export_dir)
    graphs = {kind: load_graph(export_dir / GRAPH_FILES[kind]) for kind in ("int", "qcdq", "qonnx")}
    runtime = Runtime(graphs["int"]) if "runtime" in executors else None
    # per code tensor: (accumulator tensor, thresholds) for the on-threshold coverage count
    steps = {code: (acc, t) for code, acc, t in threshold_layers(graphs["int"])}
    on_threshold = dict.fromkeys(steps, 0)
    head = description["head"]
    scale = head.get("cosine_scale", 1.0)
    tolerance = tail_tolerance(scale, head["features"])
    # float summation bounds per code tensor (0 with power-of-two scales: every sum is exact)
    error_steps = {
        layer["name"]: float(layer.get("float_error_steps", 0.0)) for layer in description["layers"]
    }
    sources = conv_sources(graphs["int"], description["layers"])
    linear = linear_head(graphs["int"])
    totals: dict[tuple[str, str], dict] = {}
    tails: dict[str, dict] = {}
    first = None
    batches = [
        (name, data[i : i + batch_size])
        for name, data in inputs.items()
        for i in range(0, len(data), batch_size)
    ]
    qcdq = None
    detector = _Detector(export_dir, description)
    decisions: dict[str, dict] = {}
    for _set_name, x in tqdm(batches, desc="verify", disable=not progress, unit="batch"):
        ref, pre, ref_logits, ref_features = torch_codes(model, x, features=True)
        ref_scores = detector.reference_scores(model, x, ref_logits, ref_features)
        names = list(ref)
        runs = {}
        bounds = dict(error_steps)  # layer worst cases; per element where runtime codes exist
        linear_bound = None
        if "runtime" in executors:
            tensors = runtime.run(x, keep_intermediates=True)
            runs["runtime"] = runtime_codes(tensors, names)
            bounds.update(element_bounds(sources, tensors))
            linear_bound = linear_tail_tolerance(linear, tensors, tolerance)
            for code, (acc, thresholds) in steps.items():
                on_threshold[code] += threshold_hits(tensors[acc], thresholds)
        if "qcdq" in executors:
            # one onnxruntime session for all batches: the code tensor names never change
            qcdq = qcdq or QcdqWitness(graphs["qcdq"], names)
            runs["qcdq"] = qcdq.run(x)
        if "qonnx" in executors:
            runs["qonnx"] = qonnx_codes(graphs["qonnx"], x, names)
        for executor, (codes, logits) in runs.items():
            rows, mismatch, differs = compare_codes(ref, pre, codes, executor, bounds)
            first = first or mismatch
            for row in rows:
                key = (executor, row["tensor"])
                total = totals.setdefault(
                    key, {**row, "checked_values": 0, "mismatches": 0, "unexplained": 0}
                )
                for field in ("checked_values", "mismatches", "unexplained"):
                    total[field] += row[field]
            stated = tolerance if linear_bound is None else linear_bound
            tail = compare_tail(ref_logits, logits, stated, skip=differs)
            seen = tails.setdefault(
                executor, {"max_abs_diff": 0.0, "tolerance": tail["tolerance"], "ok": True}
            )
            seen["tolerance"] = max(seen["tolerance"], tail["tolerance"])
            # None: shapes differ, nothing comparable; 0.0 is an exact match and stays 0.0
            worst = np.inf if tail["max_abs_diff"] is None else tail["max_abs_diff"]
            seen["max_abs_diff"] = max(seen["max_abs_diff"], worst)
            seen["ok"] = seen["ok"] and tail["ok"]
            if detector.active and (executor == "runtime" or not detector.feature_score):
                features = None
                if executor == "runtime" and detector.feature_score:
                    features = detector.runtime_features(runtime, x, tensors[FEATURE_TENSOR])
                scores = detector.scores(logits, features)
                stated_score = detector.tolerance(stated)
                row = compare_decisions(
                    ref_scores, scores, detector.threshold, stated_score, skip=differs
                )
                _accumulate(decisions, executor, row, stated_score)
    layers = list(totals.values())
    for row in layers:  # accumulator values exactly on a threshold: the boundary coverage
        if row["executor"] == "runtime" and row["tensor"] in on_threshold:
            row["on_threshold"] = on_threshold[row["tensor"]]
    per_executor = []
    for executor in executors:
        rows = [row for row in layers if row["executor"] == executor]
        per_executor.append(
            {
                "executor": executor,
                "checked_tensors": len(rows),
                "checked_values": sum(r["checked_values"] for r in rows),
                "mismatches": sum(r["mismatches"] for r in rows),
                "unexplained": sum(r["unexplained"] for r in rows),
                "tail": tails.get(executor),
            }
        )
    report = {
        "inputs": {name: int(len(data)) for name, data in inputs.items()},
        "checked_tensors": len(layers),
        "checked_values": sum(r["checked_values"] for r in layers),
        "mismatches": sum(r["mismatches"] for r in layers),
        "unexplained": sum(r["unexplained"] for r in layers)
        + sum(0 if t["ok"] else 1 for t in tails.values())
        + sum(d["unexplained"] + d["score_out_of_tolerance"] for d in decisions.values()),
        "tail_tolerance": tolerance,
        "executors": per_executor,
        "decisions": {"score": detector.name, "threshold": detector.threshold, **decisions}
        if detector.active
        else None,
        "layers": layers,
        "first_mismatch": first,
    }
    if write:
        atomic_write_json(export_dir / VERIFY_FILE, report)
    return report


class _Detector:
    """The export's deployed unknown-type score, computed from each executor's outputs.

    A feature score reads exact integer feature codes (with views: summed over the image's
    dihedral views, each view run through the same executor): equal codes give bit-identical
    float64 scores (one numpy function), so its tolerance is 0. A logit score moves by at most
    the logit tail's tolerance (lowbit/verify/compare.py).
    """

    def __init__(self, export_dir: Path, description: dict) -> None:
        from lowbit.core.scores import detector_name, is_feature_score
        from lowbit.fewshot.predict import export_views

        ood = description.get("ood") or {}
        self.score = ood.get("score") or "msp"
        self.views = export_views(description, export_dir)
        self.name = detector_name(self.score, self.views)
        self.threshold = ood.get("threshold")
        self.active = self.threshold is not None
        self.feature_score = is_feature_score(self.score)
        self.stats = load_export_stats(export_dir, description) if self.feature_score else None

    def scores(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        from lowbit.core.scores import score

        return score(self.score, logits, features, self.stats)

    def runtime_features(self, runtime, x: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Returns the runtime's feature codes of x summed over the views; `first`: view 0's."""
        from lowbit.fewshot.features import runtime_view_outputs

        return runtime_view_outputs(runtime, x, self.views, first=first)[1]

    def reference_scores(
        self, model: LowbitModel, x: np.ndarray, logits: np.ndarray, features: np.ndarray
    ):
        """Returns the fake-quant model's scores of x; `logits`, `features`: its outputs of x
        itself (view 0), from the pass whose codes verify compares."""
        if not self.active:
            return None
        if not self.feature_score:
            return self.scores(logits, None)
        from lowbit.core.views import view_outputs
        from lowbit.train.evaluation import model_outputs

        summed = view_outputs(
            lambda images: model_outputs(model, images), x, self.views, first=(logits, features)
        )[1]
        return self.scores(logits, summed)

    def tolerance(self, logit_tolerance: float | np.ndarray) -> float:
        if self.feature_score:
            return 0.0
        return float(np.max(logit_tolerance)) + SCORE_ROUNDING


def _accumulate(decisions: dict, executor: str, row: dict, tolerance: float) -> None:
    seen = decisions.setdefault(
        executor,
        {key: 0 for key in row if key != "max_abs_diff"} | {"max_abs_diff": 0.0},
    )
    for key, value in row.items():
        seen[key] = max(seen[key], value) if key == "max_abs_diff" else seen[key] + value
    seen["tolerance"] = tolerance


def format_report(report: dict) -> str:
    """Returns a readable table: one line per executor, then layers with mismatches."""
    lines = []
    labels = {
        "runtime": "integer runtime",
        "qcdq": "onnxruntime (QCDQ)",
        "qonnx": "qonnx execute_onnx",
    }
    for row in report["executors"]:
        tail = row["tail"] or {}
        lines.append(
            f"{labels.get(row['executor'], row['executor'])}: {row['mismatches']:,} of "
            f"{row['checked_values']:,} codes differ ({row['unexplained']:,} unexplained) in "
            f"{row['checked_tensors']} tensors; "
            f"logits max |diff| {tail.get('max_abs_diff', float('nan')):.2e}"
            f" (tolerance {tail.get('tolerance', float('nan')):.1e})"
        )
    decisions = report.get("decisions") or {}
    for executor, row in decisions.items():
        if not isinstance(row, dict):
            continue  # the score's name and threshold
        lines.append(
            f"{labels.get(executor, executor)}: known/unknown ({decisions['score']}) differs on "
            f"{row['decisions_differ']:,} of {row['checked']:,} inputs "
            f"({row['unexplained']:,} unexplained); scores equal on {row['scores_equal']:,}"
        )
    bad = [row for row in report["layers"] if row["mismatches"]]
    for row in bad:
        lines.append(
            f"  {row['executor']:8s} {row['tensor']:32s} {row['mismatches']:>8,} mismatches, "
            f"{row['unexplained']:,} unexplained"
        )
    first = report.get("first_mismatch")
    if first:
        lines.append(
            f"first mismatch: {first['executor']} {first['tensor']} index {first['index']} "
            f"(channel {first['channel']}): expected {first['expected']}, got {first['got']}, "
            f"pre-rounding {first['pre_rounding']:.9g} "
            f"({first['distance_ulps']:.1f} ulps, {first.get('distance_steps', 0.0):.2e} steps "
            f"from a tie; float summation bound {first.get('float_error_steps', 0.0):.2e} steps)"
        )
    return "\n".join(lines)
