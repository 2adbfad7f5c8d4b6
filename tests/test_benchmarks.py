"""Every script in benchmarks/ imports names lowbit still has (the scripts behind the docs'
numbers are not run by the suite, so a moved function would otherwise break them silently)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_lowbit_imports_resolve(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text(), str(script))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lowbit"):
            module = importlib.import_module(node.module)
            missing += [
                f"{node.module}.{alias.name}"
                for alias in node.names
                if not hasattr(module, alias.name)
                and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lowbit"):
                    importlib.import_module(alias.name)
    assert not missing, f"{script.name}: {', '.join(missing)}"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS[0].parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_speed_processes_take_turns(tmp_path):
    """Each executor's worker times the runs it is asked for, turn by turn; a worker that
    fails reports its error instead of hanging the benchmark."""
    import numpy as np
    import onnx

    from tests.runtime.graphs import conv4_model

    speed = _script("runtime_speed")
    model = tmp_path / "model.int.onnx"
    onnx.save(conv4_model(np.random.default_rng(0), channels=(3, 4, 4, 4, 4), size=16), model)
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((2, 3, 16, 16), np.float32))
    times = speed.time_interleaved([("runtime", model)] * 2, inputs, repeats=5, block=2, threads=1)
    assert [len(t) for t in times] == [5, 5] and all(ms > 0 for t in times for ms in t)
    with pytest.raises(RuntimeError, match="no such model file"):
        speed.time_interleaved(
            [("runtime", model), ("runtime", tmp_path / "missing.onnx")], inputs, 2, 1, 1
        )


def test_speed_worker_serves_timed_passes(tmp_path):
    """The benchmarks' worker (speed_worker.py): per-image CPU and wall ms of the passes
    asked for, then the heavy modules it loaded (none for the runtime)."""
    import json
    import sys

    import numpy as np
    import onnx

    from tests.runtime.graphs import conv4_model

    speed = _script("runtime_speed")
    model = tmp_path / "model.int.onnx"
    onnx.save(conv4_model(np.random.default_rng(0), channels=(3, 4, 4, 4, 4), size=16), model)
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((3, 3, 16, 16), np.float32))
    spec = {"kind": "runtime", "model": str(model), "inputs": str(inputs), "batch": 1}
    script = BENCHMARKS[0].parent / "speed_worker.py"
    worker = speed.Worker("runtime", [sys.executable, str(script), json.dumps(spec)], 1)
    try:
        assert worker.reply() == "ready"
        timing = json.loads(worker.ask("2"))
        assert len(timing["cpu_ms"]) == len(timing["wall_ms"]) == 2
        assert all(ms > 0 for ms in timing["wall_ms"])
        assert json.loads(worker.ask("0")) == {"foreign_modules": []}
    finally:
        worker.close()


def test_ood_training_changes_and_fold_runs(tmp_path, capsys):
    """The training-change harness: its losses, its rotations, its dihedral augmentation (every
    one of the 8 symmetries occurs), and a fold trained with each change through lowbit's own
    training loop (which it leaves as it found it)."""
    import torch

    import lowbit.train.loop as loop

    aux = _script("ood_auxiliary")
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    assert float(aux.nt_xent(a, a * 3, 0.05)) < 1e-3  # each row finds its own pair
    assert float(aux.nt_xent(a, b, 0.05)) > 1.0
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    turned, k = aux.rotated(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(turned[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    x = torch.arange(64 * 3 * 4 * 4, dtype=torch.float32).reshape(64, 3, 4, 4)
    seen = aux.dihedral_augment(loop.augment)(x, torch.Generator().manual_seed(0), 0)
    symmetries = [x[0].flip(2), x[0].flip(1)]
    symmetries = [x[0], *symmetries, x[0].flip(1).flip(2)]
    symmetries += [s.transpose(1, 2) for s in symmetries]
    assert {next(i for i, s in enumerate(symmetries) if torch.equal(s, v - v.min()))
            for v in seen} == set(range(8))  # fmt: skip
    original = loop.train_epoch, loop.augment
    tiny = ["--epochs", "1", "--per-class", "10", "--width", "4", "--folds", "hole"]
    for name, flags in (("rotation", ["--aux", "rotation"]),
                        ("contrastive", ["--aux", "contrastive"]),
                        ("dihedral", ["--dihedral"])):  # fmt: skip
        assert aux.main([*flags, *tiny, "--out", str(tmp_path / name)]) == 0
        assert "hole: msp " in capsys.readouterr().out
        assert (tmp_path / name / "fold_hole" / name / "metrics.json").is_file()
    assert (loop.train_epoch, loop.augment) == original


def test_ood_view_cost_times_both_view_counts(tmp_path, capsys):
    """The view-cost benchmark on a small export: every executor at 1 and at 2 views."""
    import numpy as np

    from lowbit.export.api import export_model
    from lowbit.fewshot.openset import integer_calibration
    from lowbit.targets.c.run import find_compiler
    from tests.export.helpers import IMAGE_SIZE, NUM_CLASSES, calibrated

    if find_compiler() is None:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (32, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    y = np.arange(32) % NUM_CLASSES
    export_model(
        calibrated("w2a2", "conv4"),
        tmp_path / "export",
        class_names=[str(c) for c in range(NUM_CLASSES)],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
        ood=integer_calibration(x, "rel_mahalanobis", fit=(x, y, NUM_CLASSES)),
    )
    out = tmp_path / "cost.json"
    argv = [str(tmp_path / "export"), "--views", "2", "--rounds", "1", "--out", str(out)]
    rows = _script("ood_view_cost").main(argv)
    assert set(rows) == {
        f"{executor}, {count} view(s)"
        for executor in ("runtime, batch 1", "runtime, batch 64", "C -O2")
        for count in (1, 2)
    }
    assert all(value > 0 for value in rows.values())
    assert "x one view" in capsys.readouterr().out and out.is_file()
