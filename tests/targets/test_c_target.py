"""The C target: generated C99, compiled with the system compiler, equals the numpy runtime.

Differential tests: every tensor the C code computes (its debug tap) is compared with
np.array_equal against lowbit's integer runtime on 256 inputs per model (seeded random images
and images on input-quantizer ties), for both kernels: `kernel="bitserial"` (popcount
convolutions for 1- and 2-bit weights: conv4 w1a1, w1a2, w2a2, w2a4, resnet8 w1a1 and w2a2 with
stride-2 and 1x1 convolutions; int16 dot products for the 8-bit first layer) and the scalar
reference (conv4 w1a2/w2a2, resnet8 w2a2). conv4 w8a8 with a linear head runs on both (255
thresholds: the binary search; 5- and 6-bit first-layer and head weights: bit fields straddling
bytes). The bit-serial kernels and their packing are also checked alone against numpy on random
layers (several 64-channel words, strides, 4 activation planes, 2-bit codes with -2), with each
body: the compiler's popcount (the vector body where the CPU has AVX-512 VPOPCNTDQ and cout is a
multiple of 8), without the vector body (-DLOWBIT_NO_VECTOR_POPCOUNT) and the portable one
(-DLOWBIT_NO_BUILTIN_POPCOUNT); whole models run with each of the latter two as well.
"""

from __future__ import annotations

import ctypes
import json
import math
import platform
import shutil
import subprocess

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
from lowbit.targets.c.bitplanes import (
    activation_planes,
    plane_coefficients,
    stored_weight_planes,
    weight_planes,
    words_per_pixel,
)
from lowbit.targets.c.bitserial import PACK_PLANES, POPCOUNT, bitconv_kernel
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
NO_BUILTIN = "LOWBIT_NO_BUILTIN_POPCOUNT"
NO_VECTOR = "LOWBIT_NO_VECTOR_POPCOUNT"
needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc, gcc, clang)")


def calibrated_linear(recipe: str, seed: int = 0, **overrides: object):
    """helpers.make_calibrated with a linear head."""
    return make_calibrated(recipe, "conv4", seed=seed, head="linear", **overrides)


MODELS = {
    "w1a1-conv4": lambda: calibrated("w1a1", "conv4"),
    "w1a2-conv4": lambda: calibrated("w1a2", "conv4"),
    "w2a2-conv4": lambda: calibrated("w2a2", "conv4"),
    "w2a4-conv4": lambda: calibrated("w2a4", "conv4"),
    "w1a1-resnet8": lambda: calibrated("w1a1", "resnet8"),
    "w2a2-resnet8": lambda: calibrated("w2a2", "resnet8"),
    "w8a8-conv4-linear": lambda: calibrated_linear("w8a8", first_weight_bits=5, head_weight_bits=6),
}
SCALAR = ("w1a2-conv4", "w2a2-conv4", "w2a2-resnet8", "w8a8-conv4-linear")
CASES = [f"{name}:bitserial" for name in MODELS] + [f"{name}:scalar" for name in SCALAR]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """get(name) -> (export dir, model.json, inputs, runtime outputs), each exported once."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            torch.set_num_threads(1)
            model = MODELS[name]()
            out = tmp_path_factory.mktemp(name)
            description = export_model(
                model, out, class_names=list("abcd")[:NUM_CLASSES], normalization=NORMALIZATION
            )
            x = sample_inputs(model, random=224, ties=32)
            expected = Runtime(out / "model.int.onnx").run(x, keep_intermediates=True)
            cache[name] = out, description, x, expected
        return cache[name]

    return get


@pytest.fixture(scope="module", params=CASES)
def built(request, exports, tmp_path_factory):
    """(C export dir, model.json, compiled CModel with tap, runtime outputs, C outputs, kernel)
    for one model and kernel; the C files of each kernel in their own copy of the export."""
    if find_compiler() is None:
        pytest.skip("no C compiler (cc, gcc, clang)")
    name, kernel = request.param.split(":")
    source, description, x, expected = exports(name)
    out = tmp_path_factory.mktemp(f"{name}-{kernel}") / "export"
    shutil.copytree(source, out)
    write_c_target(out, description, kernel=kernel)
    library = compile_c_target(out / C_DIR, out / "model.so", tap=True)
    c_model = CModel(library, NUM_CLASSES)
    return out, description, c_model, expected, c_model.run(x, keep_intermediates=True), kernel


@needs_cc
def test_every_tensor_equals_the_runtime(built) -> None:
    _, description, _, expected, got, _ = built
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
    _, description, _, expected, got, _ = built
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
    # inputs really differ downstream (1-bit codes of 8 channels take fewer distinct values)
    distinct = n // 2 if description["recipe"]["act_bits"] > 1 else n // 16
    assert len(np.unique(got["logits"], axis=0)) > distinct


@needs_cc
def test_without_threshold_every_image_is_known(built) -> None:
    """The default export has "threshold": null: msp is still computed, known is always 1."""
    out, description, _, expected, got, _ = built
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
    """sizeof of each packed weight array (read from the library) = ceil(model.json bits / 8);
    bit-serial layers: their bit planes, [cout][kh][kw][ceil(cin / 64)] words per plane."""
    out, description, c_model, _, _, kernel = built
    sizes = c_model.layer_sizes()
    rows = description["deployed_bits"]["layers"]
    assert set(sizes) == {row["name"] for row in rows}
    graph = onnx.load(str(out / "model.int.onnx")).graph
    shapes = {t.name.removesuffix(".weight_codes"): tuple(t.dims) for t in graph.initializer}
    bits = {
        row["name"]: row["weight_bits"] for row in description["layers"] if "weight_bits" in row
    }
    source = (out / C_DIR / file_names("lowbit")[1]).read_text()
    serial = 0
    for row in rows:
        name = row["name"]
        if kernel == "bitserial" and name != "head" and 1 <= bits.get(name, 0) <= 2:
            cout, cin, kh, kw = shapes[name]
            planes = len(plane_coefficients(bits[name]))
            expected = 8 * planes * cout * kh * kw * words_per_pixel(cin)
            serial += 1
        else:
            expected = math.ceil(row["weight_bits"] / 8)
        assert sizes[name][0] == expected, name
    assert source.count("lb_pack_planes(t") == serial  # one packing step per bit-serial layer
    thresholds = {layer["name"]: layer["thresholds"] for layer in description["layers"]}
    for name, count in thresholds.items():
        assert count <= sizes[name][1] <= 8 * count  # int8 .. int64 per threshold


@needs_cc
def test_caller_scratch_and_no_static_scratch(built, tmp_path) -> None:
    """The library compiles without its static scratch; results do not depend on the scratch."""
    out, _, c_model, _, got, _ = built
    source = out / C_DIR / file_names("lowbit")[1]
    command = [find_compiler(), "-O0", *CFLAGS, "-DLOWBIT_NO_STATIC_SCRATCH", "-c", str(source)]
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


# --- the bit-serial kernels alone ----------------------------------------------------------------
def random_codes(rng, shape: tuple, bits: int) -> np.ndarray:
    """Weight codes of a width: bipolar for 1 bit, all of two's complement (with -2^(b-1))."""
    if bits == 1:
        return rng.choice(np.array([-1, 1], np.int8), size=shape)
    return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=shape).astype(np.int8)


def numpy_conv(x: np.ndarray, weights: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """ConvInteger of codes [cin, h, w] (zero padding) in int64, tap by tap."""
    cout, _, kh, kw = weights.shape
    padded = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad)))
    ho = (padded.shape[1] - kh) // stride + 1
    wo = (padded.shape[2] - kw) // stride + 1
    acc = np.zeros((cout, ho, wo), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            window = padded[:, ky : ky + stride * ho : stride, kx : kx + stride * wo : stride]
            acc += np.einsum("oc,chw->ohw", weights[:, :, ky, kx].astype(np.int64), window)
    return acc


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(1, 2),
    planes=st.integers(1, 4),
    channels=st.integers(1, 150),
    kernel=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_bit_planes_reconstruct_codes_and_dot_products(bits, planes, channels, kernel, seed):
    """Brute force: every bit of weight_planes / activation_planes is the code's bit, and the
    popcount sum of bitplanes.py equals the integer dot product of every window."""
    rng = np.random.default_rng(seed)
    weights = random_codes(rng, (3, channels, kernel, kernel), bits)
    x = rng.integers(0, 2**planes, size=(channels, 4, 5)).astype(np.uint8)
    w_planes = weight_planes(weights, bits)
    a_planes = activation_planes(x, planes, (1, 1, 1, 1))
    words = words_per_pixel(channels)
    assert w_planes.shape == (3, kernel, kernel, words, len(plane_coefficients(bits)))
    assert a_planes.shape == (6, 7, words, planes)

    def bit(word: np.uint64, index: int) -> int:
        return int(word) >> index & 1

    fields = np.where(weights > 0, 1, 0) if bits == 1 else weights.astype(np.int64) & 3
    for o, c, ky, kx in np.ndindex(weights.shape):
        for j in range(w_planes.shape[-1]):
            assert bit(w_planes[o, ky, kx, c // 64, j], c % 64) == fields[o, c, ky, kx] >> j & 1
    for c, y, i in np.ndindex(x.shape):
        for b in range(planes):
            assert bit(a_planes[y + 1, i + 1, c // 64, b], c % 64) == x[c, y, i] >> b & 1
    assert not a_planes[0].any() and not a_planes[:, -1].any()  # the padding is code 0

    def popcount(words: np.ndarray) -> int:
        return sum(bin(int(word)).count("1") for word in words.reshape(-1))

    expected = numpy_conv(x, weights, 1, 1)
    coefficients = plane_coefficients(bits)
    for o, oy, ox in [(0, 0, 0), (1, 2, 3), (2, 3, 4)]:
        window = a_planes[oy : oy + kernel, ox : ox + kernel]  # [kh, kw, words, planes]
        total = 0
        for b in range(planes):
            for j, coefficient in enumerate(coefficients):
                both = window[..., b] & w_planes[o, ..., j]
                total += 2**b * coefficient * popcount(both)
            if bits == 1:  # bipolar: 2 popcount(a & w) - popcount(a)
                total += 2**b * (popcount(window[..., b] & w_planes[o, ..., 0]))
                total -= 2**b * popcount(window[..., b])
        assert total == expected[o, oy, ox], (o, oy, ox)


POPCOUNT_FLAGS = {
    # x86-64 without -mpopcnt: the vector body where the CPU has AVX-512 VPOPCNTDQ (and cout is
    # a multiple of 8), else the POPCNT copy, picked at run time
    "builtin": ["-O2"],
    "novector": ["-O2", f"-D{NO_VECTOR}"],
    "portable": ["-O2", f"-D{NO_BUILTIN}"],
    **({"mpopcnt": ["-O2", "-mpopcnt"]} if platform.machine() in ("x86_64", "AMD64") else {}),
}


def bitconv_library(tmp_path, planes: int, bits: int, shape: tuple, cout: int,
                    flags: list) -> ctypes.CDLL:  # fmt: skip
    """The generated lb_pack_planes + bit-serial kernel behind two exported functions."""
    name, text = bitconv_kernel(planes, bits, shape, cout)
    source = tmp_path / f"{name}.c"
    source.write_text(
        "#include <stdint.h>\n" + POPCOUNT + PACK_PLANES + text
        + "void pack(const uint8_t *x, int cin, int h, int w, int pt, int pl, int ph, int pw,\n"
        "          int planes, uint64_t *packed)\n"
        "{ lb_pack_planes(x, cin, h, w, pt, pl, ph, pw, planes, packed); }\n"
        "void conv(const uint64_t *packed, int pw, const uint64_t *weights, int sh, int sw,\n"
        "          int ho, int wo, int32_t *acc)\n"
        f"{{ {name}(packed, pw, weights, sh, sw, ho, wo, acc); }}\n"
    )  # fmt: skip
    library = tmp_path / f"{name}.so"
    command = [find_compiler(), *flags, *CFLAGS, "-fPIC", "-shared"]
    result = subprocess.run(
        [*command, str(source), "-o", str(library)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = ctypes.CDLL(str(library))
    pointer, number = ctypes.c_void_p, ctypes.c_int
    loaded.pack.argtypes = [pointer, *[number] * 8, pointer]
    loaded.conv.argtypes = [pointer, number, pointer, *[number] * 4, pointer]
    return loaded


@needs_cc
@pytest.mark.parametrize("popcount", list(POPCOUNT_FLAGS))
@pytest.mark.parametrize(
    "planes, bits, channels, cout, kernel, stride, pad",
    [
        (2, 2, 64, 16, 3, 1, 1),  # conv4-64's layers: one word per pixel
        (2, 1, 100, 8, 3, 1, 1),  # two words, the second part-filled; bipolar
        (4, 2, 130, 24, 3, 2, 1),  # three words, stride 2, 4 planes (w2a4)
        (1, 1, 5, 7, 1, 2, 0),  # resnet8's 1x1 stride-2 shortcut, 1-bit activations
        (3, 2, 70, 7, 2, 1, 0),  # an even kernel, no padding, cout without a vector body
    ],
)
def test_bitconv_kernel_equals_numpy(tmp_path, popcount, planes, bits, channels, cout, kernel,
                                     stride, pad) -> None:  # fmt: skip
    """lb_pack_planes equals activation_planes and the kernel equals a numpy ConvInteger, on
    random codes (2-bit weights include -2), with each popcount body."""
    rng = np.random.default_rng(channels)
    h, w = 9, 6
    weights = random_codes(rng, (cout, channels, kernel, kernel), bits)
    x = rng.integers(0, 2**planes, size=(channels, h, w)).astype(np.uint8)
    library = bitconv_library(tmp_path, planes, bits, (kernel, kernel, words_per_pixel(channels)),
                              cout, POPCOUNT_FLAGS[popcount])  # fmt: skip
    expected_planes = activation_planes(x, planes, (pad, pad, pad, pad))
    packed = np.full(expected_planes.size, 0xA5, np.uint64)  # garbage: pack clears it
    ph, pw = expected_planes.shape[:2]
    library.pack(x.ctypes.data, channels, h, w, pad, pad, ph, pw, planes, packed.ctypes.data)
    assert np.array_equal(packed, expected_planes.reshape(-1))
    expected = numpy_conv(x, weights, stride, pad)
    acc = np.zeros(expected.shape, np.int32)
    w_planes = stored_weight_planes(weights, bits)
    library.conv(packed.ctypes.data, pw, w_planes.ctypes.data, stride, stride,
                 expected.shape[1], expected.shape[2], acc.ctypes.data)  # fmt: skip
    assert np.array_equal(acc, expected)


@needs_cc
@pytest.mark.parametrize("define", [NO_BUILTIN, NO_VECTOR])
@pytest.mark.parametrize("name", ["w1a2-conv4", "w2a2-conv4"])
def test_other_popcount_bodies_model_equals_runtime(exports, name, define, tmp_path) -> None:
    """The whole bit-serial model compiled without the builtin popcount (-DLOWBIT_NO_BUILTIN_
    POPCOUNT: the SWAR count) or without the vector body (-DLOWBIT_NO_VECTOR_POPCOUNT: the
    per-channel POPCNT body, which the suite's CPU may otherwise never run) gives the runtime's
    tensors."""
    source, description, x, expected = exports(name)
    out = tmp_path / "export"
    shutil.copytree(source, out)
    write_c_target(out, description, kernel="bitserial")
    text = (out / C_DIR / file_names("lowbit")[1]).read_text()
    assert "lb_bitconv_" in text and "_vector(" in text
    library = compile_c_target(out / C_DIR, out / "model.so", tap=True, defines=(define,))
    got = CModel(library, NUM_CLASSES).run(x, keep_intermediates=True)
    for tensor, values in got["tensors"].items():
        assert np.array_equal(values, expected[tensor].reshape(len(x), -1)), tensor


def test_unknown_kernel_is_refused(exported) -> None:
    out, description = exported
    with pytest.raises(ConfigError, match="kernel 'simd'"):
        generate_c(onnx.load(str(out / "model.int.onnx")), description, kernel="simd")
