"""A fitted detector's two files in an export folder: detector/<category>.json and its bank.

The bank is an .npz holding one integer array `bank` [M, C] (no pickles: read with
allow_pickle=False); the JSON names it and records its sha256, and the sha256 of the trunk it
was fitted on (`trunk_fingerprint`: the cut graph's nodes and initializers, which enrolling a
class leaves unchanged), so a bank from another fit or a detector of another classifier is
refused by name. Writing: the bank first, then the JSON, each atomically; in an export with a
manifest both are then listed in it (rewritten last, as `lowbit export --target` does).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.artifacts import DETECTOR_DIR, detector_files, read_json
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


def write_detector(export_dir: Path, detector: dict, bank: np.ndarray) -> dict:
    """Writes the bank and the detector JSON (completed with bank_file and bank_sha256) into
    the export folder and lists them in its manifest, if it has one; returns the JSON."""
    json_name, bank_name = detector_files(detector["category"])
    blob = bank_bytes(bank, tuple(detector["code_range"]))
    detector = {
        **detector,
        "bank_file": bank_name,
        "bank_sha256": hashlib.sha256(blob).hexdigest(),
    }
    manifest = check_export(export_dir)
    atomic_write_bytes(export_dir / bank_name, blob)
    atomic_write_json(export_dir / json_name, detector)
    if manifest is not None:  # an export without a manifest is not given one by a part of it
        seal(export_dir, [*manifest["files"], json_name, bank_name])
    return detector


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
    low, high = detector["code_range"]
    if bank.dtype.kind not in "iu" or bank.ndim != 2 or len(bank) == 0:
        raise ModelFileError(f"{bank_path}: expected integer codes [M, C], got {bank.dtype}")
    if bank.min() < low or bank.max() > high:
        raise ModelFileError(f"{bank_path}: codes outside code_range [{low}, {high}]")
    return detector, bank.astype(np.int64)
