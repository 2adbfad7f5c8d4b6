"""The C target: generated C99, compiled with the system compiler, equals the numpy runtime.

Differential tests: every tensor the C code computes (its debug tap) is compared with
np.array_equal against lowbit's integer runtime on 256 inputs per model (seeded random images
and images on input-quantizer ties), for conv4 w1a2/w2a2 (cosine head), resnet8 w2a2 (residual
adds, sum pooling) and conv4 w8a8 with a linear head (255 thresholds: the binary search; 5- and
6-bit first-layer and head weights: bit fields straddling bytes).
"""

from __future__ import annotations

import ctypes
import json
import math

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError, ModelFileError
from lowbit.export.api import export_model
from lowbit.fewshot.predict import decide
from lowbit.runtime import Runtime
from lowbit.targets import parse_targets, write_targets
from lowbit.targets.c.ood import score_tolerance
from lowbit.targets.c.pack import Slot, layout_pools, pack_codes, packed_bytes, unpack_codes
from lowbit.targets.c.run import CFLAGS, CModel, compile_c_target, find_compiler
from lowbit.targets.c.target import C_DIR, file_names, generate_c, write_c_target
from lowbit.targets.c.templates import WEIGHT_READER
from tests.export.helpers import (
    IMAGE_SIZE,
    NUM_CLASSES,
    calibrated,
    make_calibrated,
    sample_inputs,
)

NORMALIZATION = {"mean": [0.5] * 3, "std": [0.25] * 3}
needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc, gcc, clang)")


def calibrated_linear(recipe: str, seed: int = 0, **overrides: object):
    """helpers.make_calibrated with a linear head."""
    return make_calibrated(recipe, "conv4", seed=seed, head="linear", **overrides)


MODELS = {
    "w1a2-conv4": lambda: calibrated("w1a2", "conv4"),
    "w2a2-conv4": lambda: calibrated("w2a2", "conv4"),
    "w2a2-resnet8": lambda: calibrated("w2a2", "resnet8"),
    "w8a8-conv4-linear": lambda: calibrated_linear("w8a8", first_weight_bits=5, head_weight_bits=6),
}


@pytest.fixture(scope="module", params=list(MODELS))
def built(request, tmp_path_factory):
    """(export dir, model.json, compiled CModel with tap, runtime outputs, C outputs)."""
    if find_compiler() is None:
        pytest.skip("no C compiler (cc, gcc, clang)")
    torch.set_num_threads(1)
    model = MODELS[request.param]()
    out = tmp_path_factory.mktemp(request.param)
    description = export_model(
        model, out, class_names=list("abcd")[:NUM_CLASSES], normalization=NORMALIZATION
    )
    write_c_target(out, description)
    library = compile_c_target(out / C_DIR, out / "model.so", tap=True)
    c_model = CModel(library, NUM_CLASSES)
    x = sample_inputs(model, random=224, ties=32)
    expected = Runtime(out / "model.int.onnx").run(x, keep_intermediates=True)
    return out, description, c_model, expected, c_model.run(x, keep_intermediates=True)


@needs_cc
def test_every_tensor_equals_the_runtime(built) -> None:
    _, description, _, expected, got = built
    n = len(got["logits"])
    assert n >= 256
    tensors = got["tensors"]
    # every layer's codes and the head's integers are among the tapped tensors
    names = [layer["name"] for layer in description["layers"]]
    assert set(names + ["backbone.input_quant", "head.class_dot", "logits"]) <= set(tensors)
    for name, values in tensors.items():
        reference = expected[name]
        assert values.dtype == reference.dtype, name
        assert np.array_equal(values, reference.reshape(n, -1)), name


@needs_cc
def test_head_outputs_and_argmax(built) -> None:
    _, description, _, expected, got = built
    n = len(got["logits"])
    assert np.array_equal(got["class_dots"], expected["head.class_dot"])
    if description["head"]["head"] == "cosine":
        assert np.array_equal(got["feature_sq"], expected["head.feature_sq"].reshape(-1))
    else:
        assert not got["feature_sq"].any()
    # Exact, not a tolerance: the tail is the graph's own float64 ops (Cast, Sqrt, Max, Div, Mul)
    # in the graph's order, each correctly rounded in IEEE-754 (C99 sqrt included), no FMA
    # (-ffp-contract=off), so C and numpy round identically.
    assert np.array_equal(got["logits"], expected["logits"])
    assert np.array_equal(got["argmax"], np.argmax(expected["logits"], axis=1))
    assert len(np.unique(got["logits"], axis=0)) > n // 2  # inputs really differ downstream


@needs_cc
def test_without_threshold_every_image_is_known(built) -> None:
    """The default export has "threshold": null: msp is still computed, known is always 1."""
    out, description, _, expected, got = built
    assert description["ood"]["threshold"] is None
    rows = decide(expected["logits"], list("abcd"), description["ood"])
    scores = np.array([row["score"] for row in rows])
    tolerance = score_tolerance("msp", scores, expected["logits"])  # lowbit/targets/c/ood.py
    assert np.all(np.abs(got["ood_score"] - scores) <= tolerance)
    assert got["known"].all() and all(row["known"] for row in rows)
    header = (out / C_DIR / file_names("lowbit")[0]).read_text()
    assert '#define LOWBIT_OOD_SCORE "msp"' in header
    assert "#define LOWBIT_OOD_HAS_THRESHOLD 0" in header
    assert "#define LOWBIT_OOD_THRESHOLD" not in header


@needs_cc
def test_weight_bytes_equal_deployed_bits(built) -> None:
    """sizeof of each packed weight array (read from the library) = ceil(model.json bits / 8)."""
    _, description, c_model, _, _ = built
    sizes = c_model.layer_sizes()
    rows = description["deployed_bits"]["layers"]
    assert set(sizes) == {row["name"] for row in rows}
    for row in rows:
        assert sizes[row["name"]][0] == math.ceil(row["weight_bits"] / 8), row["name"]
    thresholds = {layer["name"]: layer["thresholds"] for layer in description["layers"]}
    for name, count in thresholds.items():
        assert count <= sizes[name][1] <= 8 * count  # int8 .. int64 per threshold


@needs_cc
def test_caller_scratch_and_no_static_scratch(built, tmp_path) -> None:
    """The library compiles without its static scratch; results do not depend on the scratch."""
    out, _, c_model, _, got = built
    source = out / C_DIR / file_names("lowbit")[1]
    command = [find_compiler(), "-O0", *CFLAGS, "-DLOWBIT_NO_STATIC_SCRATCH", "-c", str(source)]
    import subprocess

    assert subprocess.run(command + ["-o", str(tmp_path / "a.o")], check=False).returncode == 0
    x = np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    first = c_model.run(x)
    ctypes.memset(c_model.scratch, 0x5A, len(c_model.scratch))  # garbage left behind
    assert np.array_equal(c_model.run(x)["logits"], first["logits"])


@needs_cc
def test_weight_reader_inverts_pack(tmp_path) -> None:
    """The C bit-field reader returns what pack_codes stored, for every width 1 .. 16."""
    source = tmp_path / "reader.c"
    source.write_text(
        "#include <stdint.h>\n"
        + WEIGHT_READER
        + "int32_t read(const uint8_t *p, uint32_t i, unsigned b) { return lb_weight(p, i, b); }\n"
    )
    library = tmp_path / "reader.so"
    command = [find_compiler(), "-O2", *CFLAGS, "-fPIC", "-shared", str(source), "-o", str(library)]
    import subprocess

    assert subprocess.run(command, check=False).returncode == 0
    read = ctypes.CDLL(str(library)).read
    read.restype = ctypes.c_int32
    rng = np.random.default_rng(0)
    for bits in range(1, 17):
        if bits == 1:
            codes = rng.choice([-1, 1], size=37)
        else:
            codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=37)
        packed = pack_codes(codes, bits)
        assert len(packed) == packed_bytes(37, bits)
        buffer = ctypes.create_string_buffer(packed, len(packed))
        values = [read(buffer, ctypes.c_uint32(i), ctypes.c_uint(bits)) for i in range(37)]
        assert values == codes.tolist(), bits


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 16), count=st.integers(0, 70), seed=st.integers(0, 2**16))
def test_pack_round_trip(bits: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if bits == 1:
        codes = rng.choice([-1, 1], size=count)
    else:
        codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=count)
    packed = pack_codes(codes, bits)
    assert len(packed) == math.ceil(count * bits / 8)
    assert np.array_equal(unpack_codes(packed, count, bits), codes)


def test_pack_rejects_codes_outside_the_width() -> None:
    with pytest.raises(ConfigError, match="do not fit 2 signed bits"):
        pack_codes(np.array([-1, 0, 2]), 2)
    with pytest.raises(ConfigError, match="bipolar"):
        pack_codes(np.array([-1, 0, 1]), 1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["int8_t", "int32_t"]),
            st.integers(1, 50),
            st.integers(0, 9),
            st.integers(0, 4),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_pools_never_overlap_live_buffers(specs) -> None:
    slots = [Slot(str(i), c, size, first, first + span) for i, (c, size, first, span) in
             enumerate(specs)]  # fmt: skip
    pools = layout_pools(slots)
    for a in slots:
        assert 0 <= a.offset and a.offset + a.size <= pools[a.ctype]
        for b in slots:
            live_together = a is not b and a.ctype == b.ctype and a.first <= b.last
            if live_together and b.first <= a.last:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A w1a2 conv4 export folder (ONNX graphs and model.json only) and its description."""
    out = tmp_path_factory.mktemp("export")
    model = calibrated("w1a2", "conv4")
    return out, export_model(model, out, class_names=list("abcd"), normalization={})


def test_unsupported_op_names_the_node(exported) -> None:
    out, description = exported
    graph = onnx.load(str(out / "model.int.onnx"))
    node = next(n for n in graph.graph.node if n.op_type == "MaxPool")
    node.op_type = "AveragePool"
    with pytest.raises(ModelFileError, match="backbone.blocks.0.pool.*AveragePool"):
        generate_c(graph, description)


def test_targets_parse_and_write(exported) -> None:
    assert parse_targets(None) == ("onnx",)
    assert parse_targets("onnx, c,c") == ("onnx", "c")
    with pytest.raises(ConfigError, match="nope"):
        parse_targets("c,nope")
    tmp_path, description = exported
    written = write_targets(("onnx", "c"), tmp_path, description)
    assert [p.rsplit("/", 1)[1] for p in written["c"]] == list(file_names("lowbit"))
    header = (tmp_path / C_DIR / "lowbit_model.h").read_text()
    assert "int lowbit_infer(const float *input" in header
    assert not list((tmp_path / C_DIR).glob(".*tmp"))  # atomic writes leave no temp files
    assert json.loads((tmp_path / "model.json").read_text())["files"]


def test_cli_rejects_an_unknown_target_before_exporting(tmp_path, capsys) -> None:
    from lowbit.cli import main

    assert main(["--quiet", "export", str(tmp_path / "missing"), "--target", "c,vhdl"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vhdl" in err[0]


@pytest.mark.slow
@needs_cc
def test_cli_export_target_c_end_to_end(tmp_path, capsys) -> None:
    """`lowbit export RUN --target onnx,c` on a trained run; the C code equals the runtime."""
    from lowbit.cli import main

    run = tmp_path / "run"
    train = ["--quiet", "train", "--recipe", "w1a2", "--width", "8", "--epochs", "1"]
    assert main([*train, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["--quiet", "--json", "export", str(run), "--target", "onnx,c"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["targets"]) == {"onnx", "c"}
    description = json.loads((run / "model.json").read_text())
    library = compile_c_target(run / C_DIR, tmp_path / "model.so")
    c_model = CModel(library, len(description["class_names"]))
    x = np.random.default_rng(0).uniform(-2, 2, (16, 3, 32, 32)).astype(np.float32)
    expected = Runtime(run / "model.int.onnx").run(x)["logits"]
    assert np.array_equal(c_model.run(x)["logits"], expected)
