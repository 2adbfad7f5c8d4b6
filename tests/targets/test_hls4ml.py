"""`--target hls4ml`: exact affine requantizers, and hls4ml's C++ emulation equal to the runtime.

The hls4ml check compiles the exported model with g++ (io_stream, ~45 s per model on 2 cores) and
is marked slow; it is skipped when the optional `hls4ml` extra is not installed.
"""

from __future__ import annotations

import json
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.export.api import export_model
from lowbit.export.thresholds import apply_thresholds
from lowbit.runtime import Runtime
from lowbit.targets.affine_requant import affine_code, solve_row
from lowbit.targets.hls4ml import CONFIG_FILE, GRAPH_FILE, chw_to_hwc, write_hls4ml
from tests.export.helpers import NUM_CLASSES, calibrated, sample_inputs


def _thresholds_of(codes: np.ndarray, accs: np.ndarray, levels: int, out_bias: int) -> np.ndarray:
    """Thresholds (smallest acc reaching each level; hi + 1 = never) of a monotone code table."""
    return np.array(
        [accs[np.argmax(codes >= out_bias + k)] if codes[-1] >= out_bias + k else accs[-1] + 1
         for k in range(1, levels + 1)]
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    slope_exp=st.integers(-6, 3),
    slope_num=st.integers(0, 9),
    offset_halves=st.integers(-20, 20),
    offset_eighths=st.sampled_from([0, 1, 4]),  # 4/8 = 1/2 with even halves: exact ties
    bits=st.integers(1, 3),
    signed=st.booleans(),
    lo=st.integers(-40, 0),
    width=st.integers(0, 60),
)
def test_affine_form_equals_thresholds_on_every_accumulator(
    slope_exp, slope_num, offset_halves, offset_eighths, bits, signed, lo, width
):
    """For dyadic affine requantizers (ties included), solve_row reproduces the thresholds."""
    a_true = Fraction(slope_num) * Fraction(2) ** slope_exp
    b_true = Fraction(offset_halves, 2) + Fraction(offset_eighths, 8)
    levels, out_bias = 2**bits - 1, (-(2 ** (bits - 1)) if signed else 0)
    accs = np.arange(lo, lo + width + 1)
    codes = np.array(
        [affine_code(a_true, b_true, int(v), out_bias, out_bias + levels) for v in accs]
    )
    row = _thresholds_of(codes, accs, levels, out_bias)
    a, b = solve_row(row, lo, lo + width, out_bias)
    got = np.array([affine_code(a, b, int(v), out_bias, out_bias + levels) for v in accs])
    assert np.array_equal(got, apply_thresholds(accs[:, None], row[None, :], out_bias)[:, 0])
    assert np.array_equal(got, codes)


def test_half_even_tie_pattern_needs_the_exact_slope():
    """Codes 0,2,2,3 (y = acc + 1/2, half to even) have one affine form only: a = 1, b = 1/2."""
    assert solve_row(np.array([1, 1, 3]), 0, 3, 0) == (Fraction(1), Fraction(1, 2))


@pytest.fixture(scope="module", params=["w1a2", "w2a2"])
def exported(request, tmp_path_factory):
    model = calibrated(request.param, "conv4")
    out = tmp_path_factory.mktemp(f"hls4ml_{request.param}")
    export_model(model, out, class_names=[str(i) for i in range(NUM_CLASSES)], normalization={})
    write_hls4ml(out)
    return request.param, model, out


def test_writes_graph_and_config_with_every_precision_from_bounds(exported):
    _, _, out = exported
    config = json.loads((out / CONFIG_FILE).read_text())
    layers = config["hls_config"]["LayerName"]
    description = json.loads((out / "model.json").read_text())
    for index, layer in enumerate(description["layers"]):
        accum = layers[f"layer{index}_conv"]["Precision"]["accum"]
        width, integer = (int(v) for v in accum[len("fixed<") : -1].split(","))
        assert integer == layer["accumulator_bits"]  # exact width, not hls4ml's fixed<16,6>
    assert layers["image"]["Precision"]["result"].endswith("RND_CONV,SAT>")
    assert config["tail"]["head"] == "cosine"
    assert (out / GRAPH_FILE).stat().st_size > 0


@pytest.mark.slow
def test_hls4ml_emulation_equals_integer_runtime(exported, tmp_path):
    """hls4ml's compile() + predict() gives the runtime's feature codes and class dots, exactly."""
    pytest.importorskip("hls4ml")
    from lowbit.targets.hls4ml import convert_hls4ml

    recipe, model, out = exported
    x = sample_inputs(model, random=192, ties=64, seed=3)
    start = time.perf_counter()
    hls_model = convert_hls4ml(out, tmp_path / "hls")
    seconds = time.perf_counter() - start
    features, class_dot = hls_model.predict(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    reference = Runtime(out / "model.int.onnx").run(x, keep_intermediates=True)
    channels = description_channels(out)
    want_features = chw_to_hwc(reference["backbone.features"], channels)
    mismatches = int(
        (~np.all(class_dot == reference["head.class_dot"], axis=1)
         | ~np.all(features == want_features, axis=1)).sum()
    )  # fmt: skip
    print(f"hls4ml {recipe}: {len(x)} inputs, {mismatches} mismatches, compile {seconds:.1f} s")
    assert np.array_equal(class_dot, reference["head.class_dot"])
    assert np.array_equal(features, want_features)


def description_channels(out) -> int:
    return json.loads((out / "model.json").read_text())["layers"][-1]["out_channels"]
