"""The stage-1 integer graph against the numpy reference, brute force, onnxruntime and qonnx."""

from __future__ import annotations

import numpy as np
import pytest
from runtime.graphs import conv4_model, run_onnxruntime, run_qonnx  # tests/ is on sys.path

from lowbit.detect.aggregate import aggregate, aggregated_range
from lowbit.detect.graph import (
    ANOMALY_MAP,
    IMAGE_SCORE,
    aggregation_kernel,
    detector_graph,
    detector_tail,
)
from lowbit.detect.memory_bank import anomaly_map, fit_memory_bank, image_scores
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.errors import ModelFileError
from lowbit.runtime import Runtime

SIZE = 64


@pytest.fixture(scope="module")
def model():
    return conv4_model(np.random.default_rng(0), channels=(3, 8, 8, 8, 8), size=32)


def images(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, 3, size, size))
    return ((pixels - 128) / 64).astype(np.float32)  # the input normalization, exact


def reference(model, layer: str, k: int, x: np.ndarray, bank_from: np.ndarray, entries: int):
    """(bank, code range, codes, map, scores) by the numpy path: cut trunk, aggregate, bank."""
    trunk = cut_trunk(model, [layer], x.shape[2], x.shape[3])
    code_range = trunk_code_range(trunk, layer)
    runtime = Runtime(trunk)
    value_range = aggregated_range(code_range, k)
    bank = fit_memory_bank(aggregate(runtime.run(bank_from)[layer], k), entries, value_range)
    codes = runtime.run(x)[layer]
    maps = anomaly_map(bank, aggregate(codes, k), value_range)
    return bank, code_range, codes, maps, image_scores(maps)


@pytest.mark.parametrize("layer, k", [("codes1", 1), ("codes1", 2), ("codes1", 3), ("act2", 3)])
def test_runtime_equals_the_numpy_path(model, layer, k):
    x = images(6, seed=1)
    bank, _, codes, maps, scores = reference(model, layer, k, x, images(3, seed=2), 40)
    graph = detector_graph(model, layer, k, bank, SIZE, SIZE, expose=(layer,))
    out = Runtime(graph).run(x, batch_size=4)  # chunked: per-sample outputs concatenate
    assert np.array_equal(out[layer], codes)
    assert np.array_equal(out[ANOMALY_MAP], maps)
    assert np.array_equal(out[IMAGE_SCORE], scores)
    assert out[ANOMALY_MAP].shape == (6, *codes.shape[2:])
    # the good images the bank was fitted on, entries all kept, are at distance 0 everywhere
    bank_all, *_ = reference(model, layer, k, x[:2], x[:2], 10**6)
    fitted = Runtime(detector_graph(model, layer, k, bank_all, SIZE, SIZE)).run(x[:2])
    assert not fitted[ANOMALY_MAP].any()


def test_tiny_cases_equal_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        channels, k = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        codes = rng.integers(0, 4, size=(2, channels, 5, 4)).astype(np.uint8)
        value_range = aggregated_range((0, 3), k)
        bank = rng.integers(0, value_range[1] + 1, size=(int(rng.integers(1, 6)), channels))
        tail = detector_tail((0, 3), bank, k)
        out = Runtime(tail).run(codes)
        summed = aggregate(codes, k)
        patches = np.moveaxis(summed, 1, -1)[..., None, :]  # [N, H, W, 1, C]
        brute = ((patches - bank) ** 2).sum(-1).min(-1)
        assert np.array_equal(out[ANOMALY_MAP], brute)
        assert np.array_equal(out[IMAGE_SCORE], brute.max(axis=(1, 2)))
        (ort_map, ort_score) = run_onnxruntime(tail, codes)
        assert np.array_equal(ort_map, brute) and np.array_equal(ort_score, out[IMAGE_SCORE])


def test_aggregation_is_the_probe_s():
    """Odd and even k: zero padding, window from y - k//2 (benchmarks/stage1_probe.py)."""
    codes = np.random.default_rng(4).integers(0, 4, size=(2, 3, 7, 6))
    for k in (1, 2, 3, 4):
        padded = np.pad(codes, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
        probe = sum(padded[:, :, i : i + 7, j : j + 6] for i in range(k) for j in range(k))
        assert np.array_equal(aggregate(codes, k), probe)
    kernel = aggregation_kernel(3, 3)
    assert kernel.sum() == 3 * 9 and np.array_equal(kernel[0, 0], np.ones((3, 3)))


def test_onnxruntime_and_qonnx_run_the_integer_graph(model):
    """qonnx's executor runs the whole graph (MultiThreshold in numpy, the rest in onnxruntime);
    onnxruntime alone runs the tail, every op of which is standard."""
    x = images(3, seed=5)
    bank, code_range, codes, maps, scores = reference(model, "codes1", 3, x, images(2, 6), 30)
    witness = run_qonnx(detector_graph(model, "codes1", 3, bank, SIZE, SIZE), x)
    assert np.array_equal(witness[ANOMALY_MAP], maps)
    assert np.array_equal(witness[IMAGE_SCORE], scores)
    ort_map, ort_score = run_onnxruntime(detector_tail(code_range, bank, 3), codes)
    assert np.array_equal(ort_map, maps) and np.array_equal(ort_score, scores)


def test_accumulator_bounds_are_recorded(model):
    bank = np.full((4, 8), 27)
    graph = detector_graph(model, "codes1", 3, bank, SIZE, SIZE)
    plan = {entry["name"]: entry for entry in Runtime(graph).layer_plan()}
    assert plan["detector.sums"]["declared_accumulator_bound"] == 9 * 3
    assert plan["detector.dot"]["declared_accumulator_bound"] == 27 * 27 * 8  # C m²
    assert plan["detector.dot"]["accumulator_bound"] >= 27 * 27 * 8


def test_a_bank_outside_the_range_or_8_bits_is_refused(model):
    with pytest.raises(ModelFileError, match="outside"):
        detector_graph(model, "codes1", 3, np.full((2, 8), 28), SIZE, SIZE)
    with pytest.raises(ModelFileError, match="8 bits"):
        detector_graph(model, "codes1", 11, np.zeros((2, 8), np.int64), SIZE, SIZE)
