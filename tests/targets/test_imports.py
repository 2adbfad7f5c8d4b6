"""The hand-offs start from model.int.onnx alone: lowbit.targets (registry, reader, C, FINN and
hls4ml writers) and the numeric core load without torch, Brevitas or the training stages."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys

class Forbidden:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in {"torch", "brevitas", "onnxruntime"} or name.startswith(
            ("lowbit.train", "lowbit.export", "lowbit.models", "lowbit.quant", "lowbit.verify")
        ):
            raise ImportError(f"{sys.argv[1]} must not import {name}")

sys.meta_path.insert(0, Forbidden())
import importlib
importlib.import_module(sys.argv[1])
"""

MODULES = [
    "lowbit.targets",
    "lowbit.targets.reader",
    "lowbit.targets.c.target",
    "lowbit.targets.c.run",
    "lowbit.targets.finn",
    "lowbit.targets.hls4ml",
    "lowbit.core.integers",
    "lowbit.core.logit_scores",
    "lowbit.core.scores",
    "lowbit.core.feature_scores",
    "lowbit.detect.memory_bank",
    "lowbit.detect.trunk",
    "lowbit.detect.aggregate",
    "lowbit.detect.graph",
    "lowbit.detect.float_graphs",
    "lowbit.onnx_graph",
    "lowbit.artifacts",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_no_torch_and_no_earlier_stage(module):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
