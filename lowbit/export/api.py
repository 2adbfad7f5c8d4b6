"""export_model: writes the three graphs and model.json for one trained model, as one set.

The files are staged and published with a manifest (lowbit/manifest.py): a reader of the export
folder sees the previous export whole, the new one whole, or a refusal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import onnx

import lowbit
from lowbit.artifacts import DESCRIPTION_FILE, GRAPH_FILES, MANIFEST_FILE, STATS_FILE
from lowbit.core.feature_scores import STATS_VERSION, stats_to_bytes
from lowbit.errors import ConfigError
from lowbit.export.lower import lower_model
from lowbit.export.qcdq import quant_to_qcdq
from lowbit.export.qonnx_export import export_qonnx_model, runnable_qonnx, set_static_batch
from lowbit.io import json_bytes, write_new_file
from lowbit.manifest import seal, staged
from lowbit.models.build import LowbitModel
from lowbit.quant.layers import quant_scale

log = logging.getLogger(__name__)

# 2: `model_bits` renamed `deployed_bits`, `input.crop` added (lowbit.artifacts reads both)
MODEL_JSON_VERSION = 2


def parse_batch(batch: str | int) -> int | None:
    """Returns a fixed batch size, or None for a dynamic batch dimension."""
    if batch in (None, "dynamic"):
        return None
    try:
        value = int(batch)
    except ValueError:
        raise ConfigError(f"--batch {batch!r}: give a positive integer or 'dynamic'") from None
    if value < 1:
        raise ConfigError(f"--batch {batch!r}: give a positive integer or 'dynamic'")
    return value


def fix_batch(model: onnx.ModelProto, batch: int | None) -> onnx.ModelProto:
    """Sets dim 0 of inputs/outputs to `batch` (None leaves the symbolic `N`)."""
    if batch is not None:
        set_static_batch(model, batch)
    return model


def build_graphs(model: LowbitModel) -> tuple[dict[str, onnx.ModelProto], list[dict], dict]:
    """Returns ({'qonnx','qcdq','int'} graphs, per-layer records, head info)."""
    model.eval()
    qonnx_graph = export_qonnx_model(model)
    graphs = {"qonnx": qonnx_graph, "qcdq": quant_to_qcdq(qonnx_graph)}
    int_graph, layers, head = lower_model(model)
    graphs["int"] = int_graph
    return graphs, layers, head


def deployed_bits(layers: list[dict], head: dict) -> dict:
    """Returns the bits an accelerator stores: weight codes, thresholds, head rows (per layer).

    A threshold is stored at its layer's accumulator width; a requantization-only layer (a
    residual operand) at the width of its integer input plus one bit.
    """
    rows = []
    for layer in layers:
        weight_bits = layer.get("weights", 0) * layer.get("weight_bits", 0)
        threshold_bits = layer["thresholds"] * layer.get("accumulator_bits", layer["act_bits"] + 2)
        rows.append(
            {"name": layer["name"], "weight_bits": weight_bits, "threshold_bits": threshold_bits}
        )
    head_bits = head["classes"] * head["features"] * head["head_weight_bits"]
    rows.append({"name": "head", "weight_bits": head_bits, "threshold_bits": 0})
    total = sum(row["weight_bits"] + row["threshold_bits"] for row in rows)
    return {"total": total, "layers": rows}


def model_description(
    model: LowbitModel,
    layers: list[dict],
    head: dict,
    *,
    class_names: list[str],
    normalization: dict,
    ood: dict | None,
    crop: dict | None = None,
) -> dict:
    """Returns model.json's content: everything a consumer needs besides the graphs.

    `crop`: lowbit.data.crop_rule() for a model trained on crops around defect masks, None for
    one trained on whole images (predict cuts its inputs by it).
    """
    recipe = model.recipe
    input_layer = model.backbone.input_quant
    return {
        "format_version": MODEL_JSON_VERSION,
        "lowbit_version": lowbit.__version__,
        "recipe": recipe.to_dict(),
        "model": model.config.to_dict(),
        "class_names": list(class_names),
        "input": {
            "name": "input",
            "shape": [3, model.config.image_size, model.config.image_size],
            "normalization": normalization,
            "crop": crop,
            "input_bits": recipe.input_bits,
            "input_scale": float(quant_scale(input_layer).reshape(-1)[0]),
        },
        "layers": layers,
        "head": head,
        "deployed_bits": deployed_bits(layers, head),
        "ood": ood or {"score": "msp", "threshold": None, "tpr": None},
        "files": dict(GRAPH_FILES),
        "manifest": MANIFEST_FILE,  # readers refuse this folder while the manifest is missing
    }


def export_model(
    model: LowbitModel,
    out_dir: str | Path,
    *,
    class_names: list[str],
    normalization: dict,
    ood: dict | Callable[[onnx.ModelProto], dict] | None = None,
    batch: int | None = None,
    source_run: str = ".",
    crop: dict | None = None,
    before_publish: Callable[[Path, dict], object] | None = None,
) -> dict:
    """Writes model.{qonnx,qcdq,int}.onnx, model.json and the manifest to `out_dir`; returns
    model.json's dict.

    `ood` may be a function of the integer graph: the open-set threshold is then calibrated on
    the logits deployments compute (lowbit.fewshot.openset.integer_calibration). `crop`: see
    `model_description`. `before_publish(staging, description)` may add files to the set in
    the sealed staging folder (lowbit.targets.write_targets) before anything moves into
    `out_dir`.
    """
    if model.recipe.is_float:
        raise ConfigError("the fp32 recipe has no quantized graphs to export: train a w*a* recipe")
    out_dir = Path(out_dir)
    graphs, layers, head = build_graphs(model)
    if callable(ood):
        ood = ood(graphs["int"])
    stats_blob = None
    if ood is not None and "stats_arrays" in ood:
        ood = dict(ood)
        stats_blob = stats_to_bytes(ood.pop("stats_arrays"))
        ood["stats"] = {
            **ood.get("stats", {}),
            "file": STATS_FILE,
            "sha256": hashlib.sha256(stats_blob).hexdigest(),
            "version": STATS_VERSION,
        }
    description = model_description(
        model,
        layers,
        head,
        class_names=class_names,
        normalization=normalization,
        ood=ood,
        crop=crop,
    )
    description["source_run"] = source_run
    payload = json.dumps(description, separators=(",", ":"))
    blobs = {}
    for kind, graph in graphs.items():
        # the QONNX file is for qonnx's executor and FINN: a fixed batch (1 unless one is
        # given) and every shape declared; the other graphs keep `N` unless a batch is given
        graph = runnable_qonnx(graph, batch or 1) if kind == "qonnx" else fix_batch(graph, batch)
        del graph.metadata_props[:]
        entry = graph.metadata_props.add()
        entry.key, entry.value = "lowbit", payload
        onnx.checker.check_model(graph)
        blobs[kind] = graph.SerializeToString()
    # every graph is built and checked before the first file is written
    files = {GRAPH_FILES[kind]: blob for kind, blob in blobs.items()}
    if stats_blob is not None:
        files[STATS_FILE] = stats_blob
    files[DESCRIPTION_FILE] = json_bytes(description)
    with staged(out_dir) as staging:
        for name, blob in files.items():
            write_new_file(staging / name, blob)
        seal(staging, files)
        if before_publish is not None:
            before_publish(staging, description)
    log.info("exported %s to %s", ", ".join(GRAPH_FILES.values()), out_dir)
    return description
