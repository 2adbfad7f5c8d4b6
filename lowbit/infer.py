"""`infer_file`: run model.int.onnx on an input array file and write the outputs atomically.

The input is a `.npy` file (float32 NCHW, normalized like model.json says). Its header is read
and checked against the file's size before any data is, and object arrays (pickles) are
refused, so a hostile file can neither run code nor make numpy allocate a declared giant array.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np

from lowbit.artifacts import DESCRIPTION_FILE, INT_GRAPH_FILE
from lowbit.core.feature_scores import FEATURE_TENSOR
from lowbit.errors import InputError, ModelFileError
from lowbit.io import atomic_write_bytes
from lowbit.manifest import check_export, read_description

log = logging.getLogger(__name__)


def _read_header(handle: io.BufferedReader, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        reader = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = reader(handle)
    except (ValueError, OSError, SyntaxError, EOFError) as error:
        raise InputError(f"{path}: not a .npy array file ({error})") from None
    return tuple(shape), np.dtype(dtype)


def load_input(path: str | os.PathLike) -> np.ndarray:
    """The numeric array stored in a .npy file; InputError names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such input file")
    with open(path, "rb") as handle:
        shape, dtype = _read_header(handle, path)
        if dtype.hasobject:
            raise InputError(f"{path}: holds Python objects (a pickle); give a numeric array")
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        stored = path.stat().st_size - handle.tell()
    if declared != stored:
        raise InputError(
            f"{path}: header declares shape {list(shape)} {dtype} ({declared:,} bytes) but the"
            f" file holds {stored:,} bytes"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read array ({error})") from None


def _detector(export_dir: Path | None) -> tuple[dict | None, dict | None, int]:
    """Returns (model.json's "ood" entry, feature statistics, view count) of an export folder
    whose detector is calibrated; (None, None, 1) for a bare graph file or an uncalibrated one."""
    if export_dir is None or not (export_dir / DESCRIPTION_FILE).is_file():
        return None, None, 1
    from lowbit.core.feature_scores import load_export_stats
    from lowbit.fewshot.predict import export_views, needs_features

    description = read_description(export_dir)
    ood = description.get("ood")
    if not isinstance(ood, dict) or ood.get("threshold") is None:
        return None, None, 1
    stats = load_export_stats(export_dir, description) if needs_features(ood) else None
    return ood, stats, export_views(description, export_dir)


def infer_file(
    model: str | os.PathLike,
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    batch_size: int | None = None,
) -> dict:
    """Runs the integer graph (a file, or an export folder's model.int.onnx, checked against
    the folder's manifest) on the input file.

    Writes every graph output to `out_path` (.npz) only after the whole run succeeded, and for
    an export folder with a calibrated detector also `ood_score` and `known` per sample (the
    decision `lowbit predict` makes); returns a summary (sample count, output shapes, predicted
    class counts for a 2-D first output).
    """
    from lowbit.runtime import Runtime
    from lowbit.runtime.runtime import DEFAULT_BATCH_SIZE

    model = Path(model)
    export_dir = model if model.is_dir() else None
    if export_dir is not None:  # a folder is an export: its files must match its manifest
        check_export(export_dir)
        model = model / INT_GRAPH_FILE
    if not model.is_file():
        raise ModelFileError(f"{model}: no such model file")
    runtime = Runtime(model)
    ood, stats, views = _detector(export_dir)
    x = load_input(input_path)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    try:
        named = [FEATURE_TENSOR] if stats is not None else []
        outputs = runtime.run(x, batch_size=batch_size, outputs=named)
        if stats is not None and views > 1:  # the score reads features summed over the views
            from lowbit.fewshot.features import runtime_view_outputs

            first = outputs[FEATURE_TENSOR]
            outputs[FEATURE_TENSOR] = runtime_view_outputs(
                runtime, x, views, batch_size, first=first
            )[1]
    except InputError as error:  # the runtime names the tensor; the user needs the file too
        raise InputError(f"{input_path}: {error}") from None
    if ood is not None:
        from lowbit.core.scores import score

        features = outputs.get(FEATURE_TENSOR)
        scores = score(ood["score"], outputs["logits"], features, stats)
        outputs = {name: outputs[name] for name in runtime.output_names}
        outputs["ood_score"] = scores
        outputs["known"] = scores >= ood["threshold"]
    buffer = io.BytesIO()
    np.savez(buffer, **outputs)
    atomic_write_bytes(out_path, buffer.getvalue())
    log.info("%s: %d samples → %s", model, len(x), out_path)
    first = outputs[runtime.output_names[0]]
    summary = {
        "model": str(model),
        "samples": int(len(x)),
        "out": str(out_path),
        "outputs": {name: list(value.shape) for name, value in outputs.items()},
    }
    if first.ndim == 2:
        counts = np.bincount(first.argmax(axis=1), minlength=first.shape[1])
        summary["predicted_class_counts"] = counts.tolist()
    return summary
