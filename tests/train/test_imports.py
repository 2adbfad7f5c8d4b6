"""The metrics of a run (accuracy, confusion matrix, every OOD score's AUROC / FPR95) are numpy
only: lowbit.train.metrics imports no torch, so reports and benchmarks read runs without it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys

class Forbidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "brevitas"}:
            raise ImportError(f"lowbit.train.metrics must not import {name}")

sys.meta_path.insert(0, Forbidden())
import numpy as np
import lowbit.train.metrics as metrics

logits = np.array([[3.0, 0.0], [0.0, 2.0], [0.5, 0.4]])
result = metrics.ood_metrics(logits[:2], logits[2:])
assert set(result) == {"msp", "max_logit", "energy"}, result
print(" ".join(sorted(m for m in sys.modules if m.startswith("lowbit"))))
"""


def test_train_metrics_imports_no_torch():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "lowbit.train.loop" not in result.stdout.split()
