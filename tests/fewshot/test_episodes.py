"""The episodic protocol: sampling, imprint / finetune, and integer == fake-quant exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError
from lowbit.fewshot import (
    episode_accuracies,
    evaluate_fewshot,
    model_features,
    prototype,
    runtime_features,
)
from lowbit.fewshot.episodes import (
    cosine_ce,
    finetune_rows,
    quantize_rows,
    sample_episodes,
    summarize,
)
from lowbit.fewshot.features import l2_normalize
from lowbit.quant.layers import fake_quant_rows
from lowbit.runtime import Runtime
from lowbit.train import load_run
from lowbit.train.run import splits_for

from .conftest import NOVEL


def test_episodes_are_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(6), 10)
    support, query = sample_episodes(labels, way=4, shot=3, queries=5, episodes=50, seed=1)
    again = sample_episodes(labels, way=4, shot=3, queries=5, episodes=50, seed=1)
    other = sample_episodes(labels, way=4, shot=3, queries=5, episodes=50, seed=2)
    assert np.array_equal(support, again[0]) and np.array_equal(query, again[1])
    assert not np.array_equal(support, other[0])
    for s, q in zip(support, query):
        classes = labels[s[:, 0]]
        assert len(set(classes)) == 4  # way distinct classes
        assert np.all(labels[s] == classes[:, None]) and np.all(labels[q] == classes[:, None])
        assert not set(s.ravel()) & set(q.ravel())  # no image is both support and query
        assert len(set(s.ravel()) | set(q.ravel())) == 4 * 8


def test_prototype_is_the_mean_of_normalized_features() -> None:
    features = np.array([[3, 4, 0], [0, 0, 2]], dtype=np.int64)
    assert np.array_equal(prototype(features), np.array([0.3, 0.4, 0.5]))


def test_quantize_rows_matches_the_cosine_head() -> None:
    rows = np.random.default_rng(0).normal(size=(7, 32))
    for pow2 in (True, False):
        codes_torch, scale = fake_quant_rows(F.normalize(torch.tensor(rows), dim=1), 8, pow2=pow2)
        ours = quantize_rows(rows, 8, pow2)
        ours_codes = np.round(ours / scale.numpy())
        assert np.array_equal(ours_codes, np.round((codes_torch / scale).numpy()))
    assert np.array_equal(quantize_rows(rows, None), rows / np.linalg.norm(rows, axis=1)[:, None])


def clusters(seed: int = 0, classes: int = 5, per_class: int = 30, spread: float = 0.2):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16))
    x = centres[:, None, :] + spread * rng.normal(size=(classes, per_class, 16))
    return x.reshape(-1, 16), np.repeat(np.arange(classes), per_class)


@pytest.mark.parametrize("method", ["imprint", "finetune"])
def test_separable_clusters_are_solved(method: str) -> None:
    features, labels = clusters()
    accuracies = episode_accuracies(
        features, labels, way=5, shot=1, queries=10, episodes=20, method=method
    )
    assert accuracies.shape == (20,) and np.all(accuracies == 1.0)


def test_cosine_ce_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    g = l2_normalize(rng.normal(size=(2, 6, 5)))
    target = np.repeat(np.eye(3), 2, axis=0)
    weights = rng.normal(size=(2, 3, 5))
    _, grad = cosine_ce(weights, g, target)
    step = 1e-6
    numeric = np.zeros_like(weights)
    for index in np.ndindex(weights.shape):
        plus, minus = weights.copy(), weights.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (cosine_ce(plus, g, target)[0] - cosine_ce(minus, g, target)[0])[
            index[0]
        ] / (2 * step)
    # central differences in float64: truncation ~step^2, cancellation ~1e-16/step = 1e-10
    np.testing.assert_allclose(grad, numeric, atol=1e-8, rtol=0)


def test_finetune_lowers_the_support_loss_below_imprint() -> None:
    features, labels = clusters(spread=1.2)
    support, _ = sample_episodes(labels, way=5, shot=5, queries=1, episodes=30, seed=0)
    g = l2_normalize(features)[support]
    start = g.mean(axis=2)
    target = np.repeat(np.eye(5), 5, axis=0)
    flat = g.reshape(30, 25, -1)
    before = cosine_ce(start, flat, target)[0]
    after = cosine_ce(finetune_rows(g, start), flat, target)[0]
    assert np.all(after < before)


def test_summary_by_hand() -> None:
    summary = summarize(np.array([0.5, 1.0, 1.0, 0.5]))
    assert summary["mean"] == 0.75
    assert summary["ci95"] == pytest.approx(1.96 * 0.25 / 2, rel=1e-15)


def test_integer_features_equal_fake_quant_codes(w2a2_run) -> None:
    model, record = load_run(w2a2_run)
    x = splits_for(record).ood.x
    fake = model_features(model, x)
    integer = runtime_features(Runtime(w2a2_run / "model.int.onnx"), x)
    assert fake.dtype == integer.dtype == np.int64
    assert np.array_equal(fake, integer) and fake.any()


def test_integer_and_fake_quant_episodes_are_identical(w2a2_run) -> None:
    kwargs = dict(way=3, shots=(1, 5), queries=5, episodes=40, methods=("imprint", "finetune"))
    fake = evaluate_fewshot(w2a2_run, integer=False, **kwargs)
    integer = evaluate_fewshot(w2a2_run, integer=True, **kwargs)
    assert fake["results"] == integer["results"]  # exact float equality, every method and shot
    assert fake["novel_classes"] == list(NOVEL) and fake["way"] == 3
    model, record = load_run(w2a2_run)
    splits = splits_for(record)
    per_episode = [
        episode_accuracies(
            features, splits.ood_types, way=3, shot=5, queries=5, episodes=40, method="imprint"
        )
        for features in (
            model_features(model, splits.ood.x),
            runtime_features(Runtime(w2a2_run / "model.int.onnx"), splits.ood.x),
        )
    ]
    assert np.array_equal(per_episode[0], per_episode[1])
    assert per_episode[0].mean() > 1 / 3  # better than chance on the colour classes


def test_fp32_run_evaluates_but_has_no_integer_path(fp32_run) -> None:
    result = evaluate_fewshot(fp32_run, way=3, shots=(1,), queries=5, episodes=10)
    assert set(result["results"]["imprint"]) == {"1"}
    with pytest.raises(ConfigError, match="fp32 run has no integer graph"):
        evaluate_fewshot(fp32_run, way=3, episodes=10, queries=5, integer=True)


def test_too_few_novel_classes_is_one_clear_line(w2a2_run) -> None:
    with pytest.raises(ConfigError) as error:
        evaluate_fewshot(w2a2_run, way=5, episodes=10)
    message = str(error.value)
    assert "holds out 3 novel class(es)" in message and "--way 3" in message
    assert "--unknown" in message and "\n" not in message


def test_too_few_images_per_class(w2a2_run) -> None:
    with pytest.raises(ConfigError, match="has 20 images"):
        evaluate_fewshot(w2a2_run, way=3, shots=(5,), queries=16, episodes=10)


@pytest.mark.parametrize(("recipe", "backbone"), [("w1a2", "conv4"), ("w2a2", "resnet8")])
def test_feature_codes_match_the_lowered_graph(recipe: str, backbone: str) -> None:
    from lowbit.export.lower import lower_model
    from lowbit.models import build_model
    from lowbit.quant import get_recipe
    from lowbit.quant.layers import ACT_STATS_STEPS

    torch.manual_seed(0)
    model = build_model(get_recipe(recipe), backbone=backbone, width=8, num_classes=3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():  # past the statistics phase: activation scales become fixed
        for _ in range(ACT_STATS_STEPS + 2):
            model(torch.randn(4, 3, 32, 32, generator=generator).clamp(-2, 2))
    model.eval()
    x = np.random.default_rng(0).uniform(-2, 2, size=(16, 3, 32, 32)).astype(np.float32)
    fake = model_features(model, x)
    integer = runtime_features(Runtime(lower_model(model)[0]), x)
    assert np.array_equal(fake, integer) and fake.any()
