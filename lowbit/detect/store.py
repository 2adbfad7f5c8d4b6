"""A fitted detector's files in an export folder: detector/<category>.json, its bank and graphs.

The bank is an .npz holding one integer array `bank` [M, C] (no pickles: read with
allow_pickle=False); the JSON names it and records its sha256, and the sha256 of the trunk it
was fitted on (`trunk_fingerprint`: the cut graph's nodes and initializers, which enrolling a
class leaves unchanged), so a bank from another fit or a detector of another classifier is
refused by name. The stage-1 graphs (detector/<category>.int.onnx, and the QCDQ / QONNX
witness forms when the export has the classifier's) are recorded alike under `graphs`: kind ->
{file, sha256}. Writing: the bank and graphs first, then the JSON, each atomically; in an export
with a manifest all are then listed in it (rewritten last, as `lowbit export --target` does).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.artifacts import DETECTOR_DIR, detector_files, detector_graph_files, read_json
from lowbit.errors import ConfigError, ModelFileError
from lowbit.io import atomic_write_bytes, atomic_write_json
from lowbit.manifest import check_export, seal

DETECTOR_FORMAT = 1
BANK_KEY = "bank"


def trunk_fingerprint(trunk: onnx.ModelProto) -> str:
    """Returns the sha256 of a cut trunk's nodes and initializers (not of its input size)."""
    digest = hashlib.sha256()
    for node in trunk.graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    for tensor in sorted(trunk.graph.initializer, key=lambda t: t.name):
        array = numpy_helper.to_array(tensor)
        digest.update(f"{tensor.name}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def bank_bytes(bank: np.ndarray, code_range: tuple[int, int]) -> bytes:
    """Returns the .npz bytes of the bank, stored in the smallest integer type of code_range."""
    dtype = np.result_type(np.min_scalar_type(code_range[0]), np.min_scalar_type(code_range[1]))
    buffer = io.BytesIO()
    np.savez(buffer, **{BANK_KEY: np.asarray(bank).astype(dtype)})
    return buffer.getvalue()


def write_detector(
    export_dir: Path,
    detector: dict,
    bank: np.ndarray,
    graphs: dict[str, onnx.ModelProto] | None = None,
) -> dict:
    """Writes the bank, the stage-1 graphs (kind -> model) and the detector JSON (completed with
    bank_file, bank_sha256 and graphs) into the export folder and lists them in its manifest,
    if it has one; returns the JSON."""
    json_name, bank_name = detector_files(detector["category"])
    graph_names = detector_graph_files(detector["category"])
    blob = bank_bytes(bank, tuple(detector["code_range"]))
    blobs = {kind: model.SerializeToString() for kind, model in (graphs or {}).items()}
    detector = {
        **detector,
        "bank_file": bank_name,
        "bank_sha256": hashlib.sha256(blob).hexdigest(),
        "graphs": {
            kind: {"file": graph_names[kind], "sha256": hashlib.sha256(data).hexdigest()}
            for kind, data in blobs.items()
        },
    }
    manifest = check_export(export_dir)
    atomic_write_bytes(export_dir / bank_name, blob)
    for kind, data in blobs.items():
        atomic_write_bytes(export_dir / graph_names[kind], data)
    atomic_write_json(export_dir / json_name, detector)
    if manifest is not None:  # an export without a manifest is not given one by a part of it
        stale = set(graph_names.values()) - {graph_names[kind] for kind in blobs}
        names = [name for name in manifest["files"] if name not in stale]
        seal(export_dir, [*names, json_name, bank_name, *(graph_names[k] for k in blobs)])
    return detector


def read_detector_graph(export_dir: Path, detector: dict, kind: str) -> onnx.ModelProto:
    """Returns the fitted stage-1 graph of `kind` (int, qcdq, qonnx) after checking its sha256
    against the detector JSON; ModelFileError names a missing or changed file."""
    from lowbit.artifacts import load_onnx

    entry = detector.get("graphs", {}).get(kind)
    if entry is None:
        raise ModelFileError(
            f"{export_dir}: detector/{detector['category']} has no {kind} graph; fit the "
            "detector again (lowbit detect fit)"
        )
    path = Path(export_dir) / entry["file"]
    if Path(entry["file"]).parent.as_posix() != DETECTOR_DIR:
        raise ModelFileError(f"{path}: a detector graph must lie in {DETECTOR_DIR}/")
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror}); fit again") from None
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise ModelFileError(f"{path}: sha256 differs from detector/{detector['category']}.json")
    return load_onnx(path)


def fitted_categories(export_dir: Path) -> list[str]:
    """Returns the categories with a detector in the export folder, sorted."""
    folder = Path(export_dir) / DETECTOR_DIR
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def choose_category(export_dir: Path, category: str | None) -> str:
    """Returns `category`, or the only fitted one; ConfigError names what is there."""
    fitted = fitted_categories(export_dir)
    if category is not None:
        detector_files(category)  # a plain file name
        if category not in fitted:
            there = ", ".join(fitted) or "none"
            raise ConfigError(
                f"{export_dir}: no detector for category {category!r} (fitted: {there}); "
                "fit one with `lowbit detect fit`"
            )
        return category
    if not fitted:
        raise ConfigError(f"{export_dir}: no detector fitted; fit one with `lowbit detect fit`")
    if len(fitted) > 1:
        raise ConfigError(
            f"{export_dir}: detectors for {', '.join(fitted)}; choose one with --category"
        )
    return fitted[0]


def read_detector(export_dir: Path, category: str) -> tuple[dict, np.ndarray]:
    """Returns (detector JSON, int64 bank [M, C]); ModelFileError names a bad or mismatched file."""
    json_name, _ = detector_files(category)
    path = Path(export_dir) / json_name
    detector = read_json(path, "detector")
    if detector["format_version"] != DETECTOR_FORMAT:
        raise ModelFileError(
            f"{path}: format_version {detector['format_version']}, this lowbit reads "
            f"{DETECTOR_FORMAT}; fit the detector again"
        )
    bank_path = Path(export_dir) / detector["bank_file"]
    if Path(detector["bank_file"]).parent.as_posix() != DETECTOR_DIR:
        raise ModelFileError(f"{path}: bank_file must lie in {DETECTOR_DIR}/")
    try:
        blob = bank_path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"{bank_path}: cannot read ({error.strerror}); fit again") from None
    if hashlib.sha256(blob).hexdigest() != detector["bank_sha256"]:
        raise ModelFileError(
            f"{bank_path}: sha256 differs from {path} (another fit's bank?); fit the detector again"
        )
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            bank = archive[BANK_KEY]
    except (OSError, ValueError, KeyError) as error:
        raise ModelFileError(f"{bank_path}: not a detector bank ({error}); fit again") from None
    if detector["pixel_threshold"] > detector["image_threshold"]:  # ints: the schema's check
        raise ModelFileError(
            f"{path}: pixel_threshold {detector['pixel_threshold']} is above image_threshold "
            f"{detector['image_threshold']}; fit the detector again"
        )
    low, high = detector["code_range"]
    if bank.dtype.kind not in "iu" or bank.ndim != 2 or len(bank) == 0:
        raise ModelFileError(f"{bank_path}: expected integer codes [M, C], got {bank.dtype}")
    if bank.min() < low or bank.max() > high:
        raise ModelFileError(f"{bank_path}: codes outside code_range [{low}, {high}]")
    return detector, bank.astype(np.int64)
