"""Run directories: config.json, load_run, init from a float run, and their error messages."""

import json

import numpy as np
import pytest
import torch

import lowbit
from lowbit.errors import ConfigError, ModelFileError
from lowbit.models import ModelConfig, build_model
from lowbit.quant import get_recipe
from lowbit.train import init_from_run, load_run, predict_logits, train

from .conftest import CLASS_NAMES, tiny_config


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, splits):
    run_dir = tmp_path_factory.mktemp("fp32")
    train(tiny_config(recipe="fp32", epochs=1), run_dir, splits=splits, progress=False)
    return run_dir


def test_run_directory_contents(fp32_run, splits):
    record = json.loads((fp32_run / "config.json").read_text())
    assert record["train"]["recipe"] == "fp32" and record["train"]["lr"] == 0.05
    assert record["recipe"]["name"] == "fp32" and record["model"]["width"] == 8
    assert record["class_names"] == CLASS_NAMES and record["unknown_names"] == ["dent"]
    assert record["data"] == "synthetic" and record["seed"] == 0
    assert set(record["versions"]) == {"lowbit", "torch", "brevitas", "numpy"}
    metrics = json.loads((fp32_run / "metrics.json").read_text())
    for score in ("msp", "max_logit", "energy"):
        assert set(metrics["ood"][score]) == {"auroc", "fpr95"}
    assert metrics["recipe"] == "fp32" and metrics["epochs"] == 1
    assert (
        len(metrics["confusion_matrix"]) == 3 and sum(map(sum, metrics["confusion_matrix"])) == 12
    )
    assert not list(fp32_run.glob(".*.tmp"))  # atomic writes leave no temp files


def test_load_run_reproduces_logits(tmp_path, splits):
    train(tiny_config(epochs=1), tmp_path, splits=splits, progress=False)
    model, record = load_run(tmp_path)
    logits = predict_logits(model, splits.test.x)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert record["recipe"]["name"] == "w1a2"
    assert np.mean(logits.argmax(1) == splits.test.y) == metrics["accuracy"]


def test_load_run_errors(tmp_path, fp32_run):
    with pytest.raises(ConfigError, match="config.json: not found"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        load_run(tmp_path)
    record = json.loads((fp32_run / "config.json").read_text())
    record["versions"]["lowbit"] = "99.0.0"
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"lowbit 99.0.0, this is lowbit {lowbit.__version__}"):
        load_run(tmp_path)
    record["versions"]["lowbit"] = lowbit.__version__
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match="checkpoint.pt: checkpoint not found"):
        load_run(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="checkpoint.pt: cannot load checkpoint"):
        load_run(tmp_path)
    record["model"]["width"] = 16
    (tmp_path / "config.json").write_text(json.dumps(record))
    (tmp_path / "checkpoint.pt").write_bytes((fp32_run / "checkpoint.pt").read_bytes())
    with pytest.raises(ModelFileError, match="weights do not fit"):
        load_run(tmp_path)


def _quant_model(**fields) -> torch.nn.Module:
    config = {"width": 8, "image_size": 16, "num_classes": 3, **fields}
    return build_model(get_recipe("w1a2"), ModelConfig(**config))


def test_init_copies_float_weights(fp32_run):
    source = torch.load(fp32_run / "checkpoint.pt", weights_only=True)["model"]
    model = _quant_model()
    copied = init_from_run(model, fp32_run)
    state = model.state_dict()
    assert "backbone.blocks.1.conv.weight" in copied and "head.weight" in copied
    assert set(copied) == set(source) & set(state)
    for key in copied:
        assert torch.equal(state[key], source[key]), key


def test_train_with_init_starts_from_the_float_run(tmp_path, fp32_run, splits):
    config = tiny_config(init=str(fp32_run), epochs=1, lr=1e-12, augment=False)
    train(config, tmp_path, splits=splits, progress=False)
    source = torch.load(fp32_run / "checkpoint.pt", weights_only=True)["model"]
    model, record = load_run(tmp_path)
    assert record["train"]["init"] == str(fp32_run)
    # lr 1e-12: four steps move the weights by far less than this
    torch.testing.assert_close(
        model.state_dict()["backbone.blocks.2.conv.weight"],
        source["backbone.blocks.2.conv.weight"],
        atol=1e-6,
        rtol=0,
    )


def test_init_errors(tmp_path, fp32_run, splits):
    with pytest.raises(ConfigError, match="no checkpoint.pt"):
        init_from_run(_quant_model(), tmp_path / "missing")
    with pytest.raises(ConfigError, match="no checkpoint.pt"):
        init_from_run(_quant_model(), tmp_path)
    with pytest.raises(ConfigError, match=r"head.weight has shape \(3, 8\).*\(5, 8\)"):
        init_from_run(_quant_model(num_classes=5), fp32_run)
    torch.save({"model": {"other.weight": torch.zeros(2)}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="no tensor name matches"):
        init_from_run(_quant_model(), tmp_path)
    with pytest.raises(ConfigError, match="init run"):
        train(tiny_config(init=str(tmp_path / "missing")), tmp_path / "run", splits=splits)


def test_distillation_from_a_teacher_run(tmp_path, fp32_run, splits):
    """A teacher changes training (the soft term is live) and mismatched classes are refused."""
    base = tiny_config(init=str(fp32_run), epochs=1)
    train(base, tmp_path / "plain", splits=splits, progress=False)
    distilled = tiny_config(init=str(fp32_run), epochs=1, teacher=str(fp32_run))
    train(distilled, tmp_path / "kd", splits=splits, progress=False)
    plain, _ = load_run(tmp_path / "plain")
    student, record = load_run(tmp_path / "kd")
    assert record["train"]["teacher"] == str(fp32_run)
    key = "backbone.blocks.2.conv.weight"
    assert not torch.equal(plain.state_dict()[key], student.state_dict()[key])
    # weight 0: the teacher is loaded but the loss is the task loss alone, step for step
    zero = tiny_config(init=str(fp32_run), epochs=1, teacher=str(fp32_run), distill_weight=0.0)
    train(zero, tmp_path / "zero", splits=splits, progress=False)
    unweighted, _ = load_run(tmp_path / "zero")
    assert torch.equal(plain.state_dict()[key], unweighted.state_dict()[key])
    other = tmp_path / "other"
    other.mkdir()
    saved = json.loads((fp32_run / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**saved, "class_names": ["x", "y", "z"]}))
    (other / "checkpoint.pt").write_bytes((fp32_run / "checkpoint.pt").read_bytes())
    with pytest.raises(ConfigError, match="classes"):
        train(tiny_config(teacher=str(other)), tmp_path / "bad", splits=splits, progress=False)
    with pytest.raises(ConfigError, match="distill_weight"):
        tiny_config(distill_weight=1.5)
