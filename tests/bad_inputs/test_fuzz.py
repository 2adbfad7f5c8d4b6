"""Fuzzing the ONNX loader and the runtime: every outcome is a LowbitError or qonnx's answer.

Three generators: corrupted bytes of a good model file, random quantizer parameters on a
`Quant` node, and the random small graphs of tests/runtime/test_property.py with one random
defect. `benchmarks/fuzz.py` runs the same tests with a much larger example budget.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from runtime.graphs import QONNX_DOMAIN, make_model, run_qonnx, tensor
from runtime.test_property import integer_graphs

from lowbit.errors import LowbitError, ModelFileError
from lowbit.runtime import Runtime

from .files import good_model

GOOD = good_model().SerializeToString()
X = np.random.default_rng(0).normal(0, 1, (2, 3, 16, 16)).astype(np.float32)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_or_refuse(model: str | Path | onnx.ModelProto, x: np.ndarray) -> dict | None:
    """The runtime's every tensor, or None when it refuses the model or input with a LowbitError."""
    try:
        return Runtime(model).run(x, keep_intermediates=True)
    except LowbitError:
        return None


def assert_equals_qonnx(model: onnx.ModelProto, x: np.ndarray, actual: dict) -> None:
    """Every tensor that both the runtime and qonnx computed is equal; there must be one (a
    comparison of no tensors would pass whatever either executor computed)."""
    expected = run_qonnx(model, x)
    given = {value.name for value in model.graph.input} | {t.name for t in model.graph.initializer}
    shared = [name for name in expected if name in actual and name not in given]
    assert shared, (
        f"no computed tensor in common: runtime {sorted(actual)[:8]}, qonnx {sorted(expected)[:8]}"
    )
    for name in shared:
        assert np.array_equal(actual[name], expected[name]), name


def test_comparison_without_common_tensors_fails():
    """Tensors named differently by the two executors (only the input and weights shared) are no
    evidence that they agree."""
    model = onnx.load_from_string(GOOD)
    computed = Runtime(model).run(X, keep_intermediates=True)
    assert_equals_qonnx(model, X, computed)
    given = {value.name for value in model.graph.input} | {t.name for t in model.graph.initializer}
    renamed = {(name if name in given else f"renamed/{name}"): v for name, v in computed.items()}
    with pytest.raises(AssertionError, match="no computed tensor in common"):
        assert_equals_qonnx(model, X, renamed)


@st.composite
def corrupted_bytes(draw: st.DrawFn) -> bytes:
    """The good model's bytes with 1-6 random flips, deletions, insertions or a truncation."""
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "delete":
            del data[at]
        elif edit == "insert":
            data.insert(at, draw(st.integers(0, 255)))
        else:
            del data[at:]
            break
    return bytes(data)


@FUZZ
@given(corrupted_bytes())
def test_corrupted_model_files(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(data)
        actual = run_or_refuse(path, X)
        if actual is not None:  # a corruption that still makes a valid graph: a different model
            assert_equals_qonnx(onnx.load(path), X, actual)


FLOATS = st.one_of(
    st.sampled_from([0.0, -1.0, np.inf, np.nan, 2.0**-20, 2.0**20]),
    st.floats(-8, 8, allow_nan=False, width=32),
)


QUANT_PARAMETERS = {
    "scale": st.one_of(FLOATS, st.floats(2.0**-10, 8, width=32)),  # mostly valid scales
    "zero_point": FLOATS,
    "bits": st.one_of(st.integers(-2, 30).map(float), st.floats(0, 30, width=32)),
    "signed": st.integers(0, 1),
    "narrow": st.integers(0, 1),
    "seed": st.integers(0, 2**32 - 1),
}


@FUZZ
@given(**QUANT_PARAMETERS)
def test_random_quantizer_parameters(scale, zero_point, bits, signed, narrow, seed):
    node = helper.make_node(
        "Quant", ["x", "s", "z", "b"], ["y"], domain=QONNX_DOMAIN, signed=signed, narrow=narrow
    )
    halves = np.random.default_rng(seed).integers(-600, 600, (3, 2, 5)) / 2  # ties included
    x = (halves * (scale if np.isfinite(scale) and scale > 0 else 1.0)).astype(np.float32)
    constants = {
        "s": np.array(scale, np.float32),
        "z": np.array(zero_point, np.float32),
        "b": np.array(bits, np.float32),
    }
    shape = ["N", *x.shape[1:]]
    model = make_model(
        [node],
        tensor("x", TensorProto.FLOAT, shape),
        [tensor("y", TensorProto.FLOAT, shape)],
        constants,
    )
    actual = run_or_refuse(model, x)
    if actual is None:  # refused: say why it is refused
        try:
            Runtime(model)
        except ModelFileError as error:
            assert "node" in str(error) and "(Quant)" in str(error)
        return
    assert_equals_qonnx(model, x, actual)


DEFECTS = ["none", "drop_initializer", "dangling_input", "threshold_rows", "weight_channels"]


def damage(model: onnx.ModelProto, defect: str, rng: np.random.Generator) -> onnx.ModelProto:
    """The model with one defect (see DEFECTS)."""
    model = copy.deepcopy(model)
    graph = model.graph
    if defect == "drop_initializer":
        graph.initializer.remove(graph.initializer[rng.integers(len(graph.initializer))])
    elif defect == "dangling_input":
        node = graph.node[rng.integers(len(graph.node))]
        node.input[0] = "nowhere"
    elif defect in ("threshold_rows", "weight_channels"):
        prefix = "t" if defect == "threshold_rows" else "w"
        tensor = next(t for t in graph.initializer if t.name.startswith(prefix))
        array = numpy_helper.to_array(tensor)
        axis = 0 if prefix == "t" else 1  # one threshold row, or one weight input channel, more
        grown = np.concatenate([array, np.take(array, [0], axis=axis)], axis=axis)
        tensor.CopyFrom(numpy_helper.from_array(grown, tensor.name))
    return model


DAMAGED_GRAPHS = (integer_graphs(), st.sampled_from(DEFECTS), st.integers(0, 2**32 - 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(*DAMAGED_GRAPHS)
def test_random_graphs_with_a_defect(case, defect, seed):
    model, x = case
    model = damage(model, defect, np.random.default_rng(seed))
    actual = run_or_refuse(model, x)
    if defect == "none":
        assert actual is not None
    if actual is not None:
        assert_equals_qonnx(model, x, actual)
