"""One tiny quick sweep shared by the bench tests: a 10-class MVTec-layout folder, 12 images per
class at 16 px, two recipes (plus their fp32 initialisation), 1 epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.bench import BenchOptions, run_bench
from lowbit.data import write_mvtec


def tiny_options(data: Path) -> BenchOptions:
    return BenchOptions(
        data=str(data),
        recipes=("w2a2", "w1a2"),
        unknown=("burn", "fold"),
        quick=True,
        verify_n=16,
        fewshot_episodes=5,
        latency_repeats=1,
    )


@pytest.fixture(scope="package")
def tiny_sweep(tmp_path_factory) -> tuple[BenchOptions, Path, dict]:
    root = tmp_path_factory.mktemp("bench")
    data = write_mvtec(root / "data", seed=0, per_class=12, size=32, good_per_category=1)
    options = tiny_options(data)
    out = root / "out"
    results = run_bench(options, out, progress=False, command="pytest tiny sweep")
    return options, out, results
