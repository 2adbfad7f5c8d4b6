"""Readers of model.json fields whose name or presence changed between format versions.

model.json format 1 named the deployed size `model_bits` and did not record how inputs were cut;
format 2 calls the size `deployed_bits` (to set it apart from metrics.json's `parameter_bits`)
and records the crop rule as `input.crop`. Every reader goes through these functions, so files
of either format read the same.
"""

from __future__ import annotations

# File names of lowbit's artifacts, written here once (schemas: docs/artifacts.md).
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
# A bench folder (lowbit bench):
RESULTS_FILE = "results.json"


def deployed_bits_of(description: dict) -> dict:
    """Returns model.json's deployed size {"total", "layers": [{name, weight_bits,
    threshold_bits}]}: weight codes and thresholds as stored."""
    bits = description.get("deployed_bits") or description.get("model_bits")
    return bits if isinstance(bits, dict) else {"total": 0, "layers": []}


def crop_rule_of(description: dict) -> dict | None:
    """Returns model.json's `input.crop` (margin, min_crop_fraction of the training crops), or
    None for a model trained on whole images. Format 1 recorded nothing: every model then was
    trained on the default mask crops unless its run said --no-crop, so the default rule is the
    safe reading (predict then asks for a mask, a box or --whole-image)."""
    from lowbit.data.preprocess import crop_rule

    entry = description.get("input", {})
    if "crop" not in entry:
        return crop_rule()
    return entry["crop"]
