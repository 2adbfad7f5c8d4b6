"""lowbit's artifact files: their names, their safe loaders and the fields a reader relies on.

Every module names a file through these constants and reads one through `read_json` or
`load_onnx` (an export's model.json through lowbit.manifest.read_description, which checks the
folder first); docs/artifacts.md documents every key. This module imports nothing of lowbit but
the errors: the torch-free runtime, targets and `predict` read artifacts through it.

model.json format 1 named the deployed size `model_bits` and did not record how inputs were cut;
format 2 calls the size `deployed_bits` (to set it apart from metrics.json's `parameter_bits`)
and records the crop rule as `input.crop`. `deployed_bits_of` (here) and
lowbit.data.preprocess.crop_rule_of read either format the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.errors import ConfigError, LowbitError, ModelFileError

if TYPE_CHECKING:
    import onnx

# A run folder (lowbit train):
CONFIG_FILE = "config.json"  # the TrainConfig, data fingerprint, class names
METRICS_FILE = "metrics.json"  # test accuracy, unknown-type scores, sizes
CHECKPOINT_FILE = "checkpoint.pt"  # weights + optimizer state, loaded weights-only
# An export folder (lowbit export), usually the run folder itself:
GRAPH_FILES = {"qonnx": "model.qonnx.onnx", "qcdq": "model.qcdq.onnx", "int": "model.int.onnx"}
INT_GRAPH_FILE = GRAPH_FILES["int"]
DESCRIPTION_FILE = "model.json"  # classes, input, head, threshold, layers
STATS_FILE = "model.ood.npz"  # feature statistics of the unknown-type score
MANIFEST_FILE = "model.manifest.json"  # sha256 of every published file, written last
VERIFY_FILE = "verify.json"  # lowbit verify's report
# Stage-1 anomaly detectors fitted into an export (lowbit detect fit), one per category:
DETECTOR_DIR = "detector"  # detector/<category>.json (detector.json) + detector/<category>.npz
# ... + the stage-1 graphs: detector/<category>.int.onnx (always), .qcdq.onnx / .qonnx.onnx
# (the witness forms, when the export has the classifier's QCDQ / QONNX graphs)
DETECTOR_GRAPH_KINDS = ("int", "qcdq", "qonnx")
# A bench folder (lowbit bench):
RESULTS_FILE = "results.json"


def detector_files(category: str) -> tuple[str, str]:
    """Returns (description, bank) file names of a category's detector, relative to the export
    folder; ConfigError for a category that is not a plain file name."""
    if (
        not category
        or category.startswith(".")
        or not all(ch.isalnum() or ch in "_.-" for ch in category)
    ):
        raise ConfigError(
            f"category {category!r}: use letters, digits, '_', '.' or '-' (a file name)"
        )
    return f"{DETECTOR_DIR}/{category}.json", f"{DETECTOR_DIR}/{category}.npz"


def detector_graph_files(category: str) -> dict[str, str]:
    """Returns {kind: file name} of a category's stage-1 graphs (int, qcdq, qonnx), relative to
    the export folder; ConfigError for a category that is not a plain file name."""
    detector_files(category)
    return {kind: f"{DETECTOR_DIR}/{category}.{kind}.onnx" for kind in DETECTOR_GRAPH_KINDS}


@dataclass(frozen=True)
class Schema:
    """What readers rely on in one JSON artifact: required fields (dotted paths into nested
    objects) and the types each may have. Other keys are free: files of older or newer lowbit
    versions carry more or fewer of them."""

    file: str
    error: type[LowbitError]  # ConfigError for a run or bench folder, ModelFileError for an export
    when_missing: str  # what the message says when the file is not there
    remedy: str  # what to do about a file that lacks a field
    fields: dict[str, tuple[type, ...]]


_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
SCHEMAS = {
    "config": Schema(
        CONFIG_FILE,
        ConfigError,
        "not found; is this a run directory written by `lowbit train`?",
        "train the run again",
        {"recipe": (dict,), "model": (dict,), "versions": (dict,), "versions.lowbit": (str,)},
    ),
    "metrics": Schema(
        METRICS_FILE,
        ConfigError,
        "not found; the run is unfinished: train it (again)",
        "train the run again",
        {
            "recipe": (str,),
            "accuracy": _OPTIONAL_NUMBER,
            "class_names": (list,),
            "ood": (dict, type(None)),
        },
    ),
    "model": Schema(
        DESCRIPTION_FILE,
        ModelFileError,
        "missing; run `lowbit export` first",
        "export the model again",
        {
            "format_version": (int,),
            "class_names": (list,),
            "model": (dict,),
            "model.image_size": (int,),
            "input": (dict,),
            "layers": (list,),
            "head": (dict,),
            "files": (dict,),
            "files.int": (str,),
        },
    ),
    "verify": Schema(
        VERIFY_FILE,
        ModelFileError,
        "missing; run `lowbit verify` first",
        "run `lowbit verify` again",
        {
            "inputs": (dict,),
            "checked_values": (int,),
            "mismatches": (int,),
            "unexplained": (int,),
            "tail_tolerance": _NUMBER,
            "executors": (list,),
            "layers": (list,),
        },
    ),
    "detector": Schema(
        "detector.json",  # stored as detector/<category>.json
        ModelFileError,
        "missing; fit one with `lowbit detect fit`",
        "fit the detector again (lowbit detect fit)",
        {
            "format_version": (int,),
            "category": (str,),
            "layer": (str,),
            "aggregate": (int,),
            "image_size": (list,),
            "map_size": (list,),
            "code_range": (list,),
            "image_threshold": (int,),
            "pixel_threshold": (int,),
            "bank_file": (str,),
            "bank_sha256": (str,),
            "trunk_sha256": (str,),
        },
    ),
    "results": Schema(
        RESULTS_FILE,
        ConfigError,
        "not found; run `lowbit bench` first",
        "run `lowbit bench` again",
        {"schema_version": (int,), "options": (dict,), "rows": (list,)},
    ),
}


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_schema(data: object, schema_name: str, path: str | os.PathLike) -> dict:
    """Returns `data` when it has every field of the schema with an accepted type; else the
    schema's error names `path` and the first field at fault."""
    schema = SCHEMAS[schema_name]
    if not isinstance(data, dict):
        raise schema.error(f"{path}: not a lowbit {schema.file} (expected a JSON object)")
    for field, types in schema.fields.items():
        value: object = data
        for key in field.split("."):  # the parent's type is checked first: it is a dict here
            if key not in value:
                raise schema.error(f"{path}: field '{field}' is missing; {schema.remedy}")
            value = value[key]
        # bool is an int to isinstance; no schema field accepts a bool where it wants a number
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise schema.error(
                f"{path}: field '{field}' is {type(value).__name__}, expected "
                f"{_type_names(types)}; {schema.remedy}"
            )
    return data


def read_json(path: str | os.PathLike, schema_name: str) -> dict:
    """Returns the JSON object in `path` after checking it against SCHEMAS[schema_name]; the
    schema's error (ConfigError or ModelFileError) names the file and the field at fault."""
    schema = SCHEMAS[schema_name]
    path = Path(path)
    if not path.is_file():
        raise schema.error(f"{path}: {schema.when_missing}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise schema.error(f"{path}: not valid JSON ({error})") from None
    return check_schema(data, schema_name, path)


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Returns the ModelProto stored at `path`, external data left unread; ModelFileError names
    the file when it is missing or not ONNX. lowbit's one reader of ONNX files: the checks of
    what it returns are lowbit.runtime.untrusted's."""
    import onnx  # on first use: reading JSON artifacts needs no onnx

    label = os.fspath(path)
    if not os.path.isfile(label):
        raise ModelFileError(f"{label}: no such model file")
    try:  # external data would make the graph read other files: lowbit never writes it
        return onnx.load(label, load_external_data=False)
    except Exception as error:  # protobuf raises its own DecodeError subclasses
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{label}: not a readable ONNX model ({reason})") from None


def deployed_bits_of(description: dict) -> dict:
    """Returns model.json's deployed size {"total", "layers": [{name, weight_bits,
    threshold_bits}]}: weight codes and thresholds as stored."""
    bits = description.get("deployed_bits") or description.get("model_bits")
    return bits if isinstance(bits, dict) else {"total": 0, "layers": []}
