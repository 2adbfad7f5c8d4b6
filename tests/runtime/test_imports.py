"""The runtime runs where only numpy and onnx are installed (DESIGN.md: runtime/ imports)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx

from .graphs import conv4_model

PROBE = """
import sys

class Forbidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "brevitas", "qonnx", "onnxruntime", "scipy"}:
            raise ImportError(f"lowbit.runtime must not import {name}")

sys.meta_path.insert(0, Forbidden())
import numpy as np
from lowbit.runtime import Runtime

x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
Runtime(sys.argv[1]).run(x, keep_intermediates=True)
Runtime(sys.argv[1]).run(x, batch_size=2)
print(" ".join(sorted(m for m in sys.modules if m.startswith("lowbit"))))
"""


def test_runtime_imports_only_numpy_onnx_errors_and_artifacts(tmp_path):
    path = tmp_path / "model.int.onnx"
    onnx.save(conv4_model(np.random.default_rng(0), channels=(3, 8, 8, 8, 8), size=16), path)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    modules = set(result.stdout.split())
    # lowbit.artifacts: the one ONNX file reader; it imports nothing of lowbit but the errors
    assert modules - {"lowbit", "lowbit.errors", "lowbit.artifacts"} == {
        m for m in modules if m.startswith("lowbit.runtime")
    }
