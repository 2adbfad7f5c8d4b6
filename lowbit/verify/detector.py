"""verify_detector: the stage-1 detector's codes, maps and scores on four executors, compared.

The reference is the run's fake-quant torch model: the trunk codes by forward hooks (as
`verify_export` captures the classifier's), then the numpy tail (`aggregate.aggregate`,
`memory_bank.anomaly_map`, `image_scores`). The witnesses run whole graphs: the integer runtime
on `detector_graph`, onnxruntime on the QCDQ detector and qonnx's `execute_onnx` on the QONNX
detector (`detect/float_graphs.py`: float32 tails, exact below 2^24) and on `detector_graph`
itself (its standard ops, ConvInteger included, through onnxruntime). Trunk codes go through
`compare_codes`, with its explained / unexplained rule; an anomaly-map value or image score that
differs is explained only in a sample whose trunk codes already differ, else unexplained.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from lowbit.artifacts import GRAPH_FILES
from lowbit.detect.aggregate import aggregate, aggregated_range
from lowbit.detect.float_graphs import LAYER_CODES, pooling_chain, witness_detector
from lowbit.detect.graph import ANOMALY_MAP, IMAGE_SCORE, detector_graph
from lowbit.detect.memory_bank import anomaly_map, distance_bound, image_scores
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.errors import ModelFileError
from lowbit.models.build import LowbitModel
from lowbit.quant.layers import quant_scale
from lowbit.verify.api import load_graph
from lowbit.verify.capture import execute_qonnx, graph_scales, torch_codes
from lowbit.verify.compare import compare_codes

log = logging.getLogger(__name__)
EXECUTORS = ("runtime", "qcdq", "qonnx", "int_qonnx")
"""int_qonnx: the integer detector graph itself under qonnx's execute_onnx."""


def torch_trunk(model: LowbitModel, x: np.ndarray, layer: str, source: str) -> tuple[dict, dict]:
    """Return (codes, pre-rounding values) of the trunk's code tensors and of `layer`.

    `layer` may be a MaxPool of code tensor `source`: its codes are the pool's output / the
    source's scale, and its "pre-rounding" values the codes themselves (a pool rounds nothing,
    so a differing pooled code is explained only by a differing input code).
    """
    pooled = {}
    handle = None
    if layer != source:
        modules = dict(model.named_modules())
        if layer not in modules or source not in modules:
            raise ModelFileError(f"model has no module '{layer}' reading '{source}'")
        scale = quant_scale(modules[source])

        def hook(module, inputs, output):
            pooled["codes"] = torch.round(output.detach() / scale).numpy().astype(np.int64)

        handle = modules[layer].register_forward_hook(hook)
    try:
        codes, pre, _ = torch_codes(model, x, part=model.backbone)
    finally:
        if handle is not None:
            handle.remove()
    if layer != source:
        codes[layer] = pooled["codes"]
        pre[layer] = pooled["codes"].astype(np.float64)
    return codes, pre


class _Witnesses:
    """The detector graphs of one export, for one image size, and how to run each."""

    def __init__(self, export_dir, layer, k, bank, shape, upstream, executors) -> None:
        graphs = {kind: load_graph(Path(export_dir) / GRAPH_FILES[kind]) for kind in GRAPH_FILES}
        self.upstream, self.layer = upstream, layer
        self.runners = {}
        exposed = tuple(dict.fromkeys([*upstream, layer]))
        integer = detector_graph(graphs["int"], layer, k, bank, *shape, exposed)
        if "runtime" in executors:
            from lowbit.runtime import Runtime

            runtime = Runtime(integer)
            self.runners["runtime"] = lambda x: runtime.run(x)
        if "int_qonnx" in executors:  # standard ops through onnxruntime, MultiThreshold numpy
            self.runners["int_qonnx"] = lambda x: execute_qonnx(integer, x)
        for kind in ("qcdq", "qonnx"):
            if kind not in executors:
                continue
            witness = witness_detector(
                graphs[kind], graphs["int"], layer, k, bank, *shape, tuple(upstream)
            )
            scales = graph_scales(graphs[kind], list(upstream))
            run = (
                _onnxruntime(witness)
                if kind == "qcdq"
                else functools.partial(execute_qonnx, witness)
            )
            self.runners[kind] = lambda x, run=run, scales=scales: self._from_float(run(x), scales)

    def _from_float(self, outputs: dict, scales: dict[str, float]) -> dict[str, np.ndarray]:
        codes = {
            name: np.round(outputs[name].astype(np.float64) / scales[name]).astype(np.int64)
            for name in self.upstream
        }
        codes[self.layer] = outputs[LAYER_CODES].astype(np.int64)
        return codes | {ANOMALY_MAP: outputs[ANOMALY_MAP], IMAGE_SCORE: outputs[IMAGE_SCORE]}


def _onnxruntime(model: onnx.ModelProto) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Return x -> outputs by name of one onnxruntime session running `model` as written."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT_DISABLE_ALL, as QcdqWitness: fusions (QDQ -> QLinearConv) would change the math
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]
    return lambda x: dict(zip(names, session.run(None, {"input": x})))


def _exact_differences(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per value: differs (float outputs compared as float64: exact for integers < 2^53)."""
    if expected.shape != got.shape:
        return np.ones(expected.shape, dtype=bool)
    return expected.astype(np.float64) != got.astype(np.float64)


def verify_detector(
    model: LowbitModel,
    export_dir: str | Path,
    layer: str,
    k: int,
    bank: np.ndarray,
    inputs: dict[str, np.ndarray],
    *,
    executors: tuple[str, ...] = EXECUTORS,
    max_images: dict[str, int] | None = None,
    batch_size: int = 50,
) -> dict:
    """Return the comparison report of the stage-1 detector on `inputs` (named image sets).

    Every image goes through torch and each executor, up to `max_images[executor]` images
    (qonnx's executor is slow). Counts: trunk code values (every code tensor up to `layer`),
    anomaly-map values and image scores, each with mismatches and unexplained ones.
    """
    export_dir = Path(export_dir)
    int_graph = load_graph(export_dir / GRAPH_FILES["int"])
    height, width = next(iter(inputs.values())).shape[-2:]
    trunk = cut_trunk(int_graph, [layer], height, width)
    code_range = trunk_code_range(trunk, layer)
    value_range = aggregated_range(code_range, k)
    source, _ = pooling_chain(int_graph, layer)
    produced = {node.output[0] for node in trunk.graph.node}
    max_images = max_images or {}
    witnesses = None
    totals = {
        e: {"executor": e, "images": 0, **{p: _zero() for p in ("trunk", "map", "score")}}
        for e in executors
    }
    layers: dict[tuple[str, str], dict] = {}
    first = None
    for set_name, data in inputs.items():
        for start in range(0, len(data), batch_size):
            x = np.ascontiguousarray(data[start : start + batch_size])
            codes, pre = torch_trunk(model, x, layer, source)
            upstream = [name for name in codes if name in produced and name != layer]
            reference = {name: codes[name] for name in [*upstream, layer]}
            maps = anomaly_map(bank, aggregate(codes[layer], k), value_range)
            scores = image_scores(maps)
            if witnesses is None:
                witnesses = _Witnesses(
                    export_dir, layer, k, bank, (height, width), upstream, executors
                )
            for executor, run in witnesses.runners.items():
                left = max_images.get(executor, len(x) * 10**9) - totals[executor]["images"]
                if left <= 0:
                    continue
                part = slice(0, min(left, len(x)))
                got = run(np.ascontiguousarray(x[part]))
                rows, mismatch, differs = compare_codes(
                    {n: v[part] for n, v in reference.items()},
                    {n: v[part] for n, v in pre.items() if n in reference},
                    got,
                    executor,
                )
                first = first or (mismatch and {**mismatch, "set": set_name})
                total = totals[executor]
                total["images"] += len(got[ANOMALY_MAP])
                for row in rows:
                    seen = layers.setdefault((executor, row["tensor"]), {**row, **_zero()})
                    for field in ("checked_values", "mismatches", "unexplained"):
                        seen[field] += row[field]
                        total["trunk"][field] += row[field]
                inherited = np.zeros(len(got[ANOMALY_MAP]), bool) if differs is None else differs
                for key, expected in (("map", maps[part]), ("score", scores[part])):
                    diff = _exact_differences(
                        expected, got[ANOMALY_MAP if key == "map" else IMAGE_SCORE]
                    )
                    per_sample = diff.reshape(len(diff), -1)
                    total[key]["checked_values"] += diff.size
                    total[key]["mismatches"] += int(diff.sum())
                    total[key]["unexplained"] += int(per_sample[~inherited].sum())
            log.info("verified %s images %d-%d", set_name, start, start + len(x))
    unexplained = sum(
        t[p]["unexplained"] for t in totals.values() for p in ("trunk", "map", "score")
    )
    return {
        "layer": layer,
        "aggregate": k,
        "bank_entries": int(len(bank)),
        "code_range": list(code_range),
        "distance_bound": distance_bound(value_range, int(np.asarray(bank).shape[1])),
        "image_size": [int(height), int(width)],
        "inputs": {name: int(len(data)) for name, data in inputs.items()},
        "executors": list(totals.values()),
        "layers": list(layers.values()),
        "mismatches": sum(
            t[p]["mismatches"] for t in totals.values() for p in ("trunk", "map", "score")
        ),
        "unexplained": unexplained,
        "first_mismatch": first or None,
    }


def _zero() -> dict[str, int]:
    return {"checked_values": 0, "mismatches": 0, "unexplained": 0}


def format_detector_report(report: dict) -> str:
    """Return one line per executor: images, trunk codes, map values and scores that differ."""
    size = "x".join(map(str, report["image_size"]))
    lines = [
        f"stage 1 at {report['layer']}/{report['aggregate']}, bank {report['bank_entries']}, "
        f"{size} px, distance bound {report['distance_bound']:,}"
    ]
    for row in report["executors"]:
        parts = [
            f"{what} {row[key]['mismatches']:,} of {row[key]['checked_values']:,} differ "
            f"({row[key]['unexplained']:,} unexplained)"
            for key, what in (("trunk", "codes"), ("map", "map values"), ("score", "scores"))
        ]
        lines.append(f"{row['executor']:8s} {row['images']:>6,} images: " + "; ".join(parts))
    return "\n".join(lines)
