"""Fixtures that build the bad-input corpus's shared ingredients once per session, in tmp."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from lowbit.deploy import export_run
from lowbit.train import TrainConfig, train

from . import files
from .cases import CASES, Case, Env


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """A good image folder, a tiny w1a2 run trained on it and exported, and a good int graph."""
    root = tmp_path_factory.mktemp("bad_inputs_env")
    folder = files.write_image_folder(root / "data")
    run = root / "run"
    config = TrainConfig(
        recipe="w1a2",
        width=4,
        image_size=files.IMAGE_SIZE,
        epochs=1,
        batch_size=4,
        data=str(folder),
    )
    train(config, run, progress=False)
    export_run(run)
    model = root / "good.onnx"
    onnx.save(files.good_model(), model)
    return Env(folder=folder, run=run, model=model)


@pytest.fixture
def build_case(tmp_path: Path, env: Env):
    """build_case(name) -> Case, its files written under this test's tmp_path."""

    def build(name: str) -> Case:
        _, builder = CASES[name]
        return builder(tmp_path, env)

    return build
