"""README's Python example runs as written, on tiny settings."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lowbit.fewshot
import lowbit.train
import lowbit.verify.run
from lowbit.data import load_splits
from lowbit.data.synth import generate_builtin

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = dict(width=8, per_class=20, image_size=16, batch_size=16, warmup_steps=2)


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "README should hold one Python example"
    return blocks[0]


def test_readme_python_example(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    # the example's own calls, with a tiny model and data set and fewer verify inputs
    config = lowbit.train.TrainConfig

    def tiny_config(**fields):
        return config(**{**fields, **TINY, "epochs": 1})

    monkeypatch.setattr(lowbit.train, "TrainConfig", tiny_config)
    monkeypatch.setattr(
        lowbit.verify.run,
        "verify_run",
        functools.partial(lowbit.verify.run.verify_run, n=16, random=16, progress=False),
    )
    monkeypatch.setattr(
        lowbit.train, "train", functools.partial(lowbit.train.train, progress=False)
    )
    monkeypatch.chdir(tmp_path)
    # the part the example classifies: a whole built-in image of a known type and its mask
    raw = generate_builtin(seed=7, per_class=1, classes=("stain",))
    Image.fromarray(raw.images[0]).save(tmp_path / "part.png")
    Image.fromarray(raw.masks[0].astype(np.uint8) * 255).save(tmp_path / "part_mask.png")
    exec(compile(readme_python(), str(README), "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2  # the metrics line and one prediction
    names = load_splits(image_size=TINY["image_size"], per_class=TINY["per_class"]).class_names
    assert printed[1].split()[0] in (*names, "unknown")
    assert (tmp_path / "runs/w1a2/verify.json").is_file()
