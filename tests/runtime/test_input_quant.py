"""QuantizeInput (input_quant.py): the fused input quantizer equals Div → Quant → Cast."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from lowbit.runtime import Runtime
from lowbit.runtime.graph import load_graph
from lowbit.runtime.input_quant import QuantizeInput, input_quantizations

from .graphs import QONNX_DOMAIN, make_model, tensor


def quantizer_graph(divisor: float, bits: int, signed: bool, narrow: bool, scale: float = 1.0):
    code_type = TensorProto.INT8 if signed else TensorProto.UINT8
    nodes = [
        helper.make_node("Div", ["x", "divisor"], ["scaled"]),
        helper.make_node(
            "Quant",
            ["scaled", "scale", "zero", "bits"],
            ["quantized"],
            domain=QONNX_DOMAIN,
            signed=int(signed),
            narrow=int(narrow),
            rounding_mode="ROUND",
        ),
        helper.make_node("Cast", ["quantized"], ["codes"], to=code_type),
    ]
    initializers = {
        "divisor": np.array(divisor, np.float32),
        "scale": np.array(scale, np.float32),
        "zero": np.array(0.0, np.float32),
        "bits": np.array(bits, np.float32),
    }
    return make_model(
        nodes,
        tensor("x", TensorProto.FLOAT, ["N", 2, 3, 4]),
        [tensor("codes", code_type, ["N", 2, 3, 4])],
        initializers,
    )


@settings(max_examples=40, deadline=None)
@given(
    divisor=st.sampled_from([1.0, 1 / 64, 0.25, 3.0, 1e-30, 0.1]),
    bits=st.integers(2, 8),
    signed=st.booleans(),
    narrow=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_equals_plain(divisor, bits, signed, narrow, seed):
    runtime = Runtime(quantizer_graph(divisor, bits, signed, narrow))
    assert isinstance(runtime._fused_steps[0].run, QuantizeInput)
    rng = np.random.default_rng(seed)
    for batch in (1, 64):
        # ties (k + 0.5), values beyond the clamp bounds, zeros of both signs, huge values
        steps = rng.integers(-4 * 2**bits, 4 * 2**bits, (batch, 2, 3, 4)) / 2
        x = (steps * np.float32(divisor)).astype(np.float32)
        x.reshape(-1)[:4] = [0.0, -0.0, 3e38, -3e38]
        with np.errstate(over="ignore"):  # huge values overflow in both, alike
            plain = runtime.run(x, keep_intermediates=True)["codes"]
            fused = runtime.run(x)["codes"]
        assert fused.dtype == plain.dtype and np.array_equal(fused, plain)


def test_only_the_pattern_fuses():
    assert len(input_quantizations(load_graph(quantizer_graph(0.5, 8, True, False)))) == 1
    assert input_quantizations(load_graph(quantizer_graph(0.5, 8, True, False, 2.0))) == []
    assert input_quantizations(load_graph(quantizer_graph(0.5, 1, True, False))) == []
