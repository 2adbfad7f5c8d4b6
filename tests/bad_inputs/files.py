"""Writers of good and bad files: images, data folders, ONNX graphs, .npy inputs, checkpoints.

Everything is generated here, in tmp_path; no binary blob is committed.
"""

from __future__ import annotations

import copy
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from PIL import Image

IMAGE_SIZE = 16
CLASSES = ("crack", "hole", "stain")
MEANS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def write_image_folder(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """`root/<class>/NNN.png`: 16x16 RGB images whose class sets the mean colour."""
    rng = np.random.default_rng(seed)
    for name, mean in zip(CLASSES, MEANS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.clip(rng.normal(mean, 40, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index:03d}.png")
    return root


def write_mvtec_category(root: Path, per_defect: int = 4, seed: int = 0) -> Path:
    """`root/part/{test,ground_truth}/<defect>/`: one MVTec AD category with masks."""
    rng = np.random.default_rng(seed)
    category = root / "part"
    for name, mean in zip(CLASSES, MEANS):
        test, truth = category / "test" / name, category / "ground_truth" / name
        test.mkdir(parents=True)
        truth.mkdir(parents=True)
        for index in range(per_defect):
            pixels = np.clip(rng.normal(mean, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(test / f"{index:03d}.png")
            mask = np.zeros((24, 24), np.uint8)
            mask[8:16, 8:16] = 255
            Image.fromarray(mask).save(truth / f"{index:03d}_mask.png")
    (category / "train" / "good").mkdir(parents=True)
    return root


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit PNG of side x side zeros: ~50 KB on disk, 1.2 GB as decoded RGB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    path.write_bytes(png + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))
    return path


def write_odd_modes(folder: Path) -> list[Path]:
    """16-bit gray, palette, 8-bit gray and RGBA images that lowbit must accept and convert."""
    rng = np.random.default_rng(1)
    gray16 = Image.fromarray(rng.integers(0, 65535, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint16))
    rgb = Image.fromarray(rng.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8))
    images = {
        "gray16.png": gray16,
        "palette.png": rgb.convert("P"),
        "gray8.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
    }
    for name, image in images.items():
        image.save(folder / name)
    return [folder / name for name in images]


# ----- ONNX -----------------------------------------------------------------------------------


def good_model() -> onnx.ModelProto:
    """A small integer conv4 graph (docs/int_graph.md) on 3x16x16 inputs, 3 classes."""
    from runtime.graphs import conv4_model  # tests/ is on sys.path under pytest

    return conv4_model(np.random.default_rng(0), channels=(3, 4, 4, 4, 4), size=16, classes=3)


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    _initializer(model, name).CopyFrom(numpy_helper.from_array(value, name))


def bad_model(kind: str) -> onnx.ModelProto:
    """The good model with one defect; `kind` names it (see ONNX_DEFECTS)."""
    model = copy.deepcopy(good_model())
    if kind == "unsupported_op":
        _node(model, "pool1").op_type = "AveragePool"
    elif kind == "foreign_domain":
        _node(model, "threshold1").domain = "lowbit_payload"
    elif kind.startswith("quant_bits_"):
        _set(model, "eight", np.array(float(kind.removeprefix("quant_bits_")), np.float32))
    elif kind == "quant_zero_scale":
        _set(model, "one", np.array(0.0, np.float32))
    elif kind in ("attribute_no_value", "attribute_wrong_type"):  # the first found by fuzzing
        attribute = next(
            a for a in _node(model, "input_quant").attribute if a.name == "rounding_mode"
        )
        if kind == "attribute_no_value":
            attribute.type = onnx.AttributeProto.UNDEFINED
        else:
            attribute.CopyFrom(onnx.helper.make_attribute("rounding_mode", 1))
    elif kind == "name_not_utf8":  # found by fuzzing: protobuf returns bytes, qonnx fails
        data = bytearray(model.SerializeToString())
        data[data.index(b"threshold3")] = 0xF4
        model = onnx.ModelProto.FromString(bytes(data))
    elif kind == "opset_zero":  # found by fuzzing: qonnx cannot run a version-0 domain
        next(o for o in model.opset_import if o.domain == "qonnx.custom_op.general").version = 0
    elif kind == "opset_old":
        next(o for o in model.opset_import if o.domain == "").version = 7
    elif kind == "cycle":
        _node(model, "cast0").input[0] = "codes1"
    elif kind == "missing_initializer":
        model.graph.initializer.remove(_initializer(model, "w2"))
    elif kind == "conv_channels":
        _set(model, "w2", np.ones((4, 5, 3, 3), np.int8))
    elif kind == "threshold_channels":
        _set(model, "t2", np.ones((7, 3), np.float32))
    elif kind == "absurd_size":
        tensor = _initializer(model, "w1")
        del tensor.dims[:]
        tensor.dims.extend([100_000, 100_000, 3, 3])
    elif kind == "external_data":
        tensor = _initializer(model, "input_scale")
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="secrets.bin")
    else:
        raise ValueError(kind)
    return model


ONNX_DEFECTS = {  # kind -> text the one-line error must contain
    "unsupported_op": "'AveragePool'",
    "foreign_domain": "domain 'lowbit_payload'",
    "quant_bits_2.5": "bitwidth 2.5",
    "quant_bits_0": "bitwidth 0.0",
    "quant_bits_40": "bitwidth 40.0",
    "quant_zero_scale": "scale 'one'",
    "attribute_no_value": "node 'input_quant' (Quant): attribute 'rounding_mode' has no value",
    "attribute_wrong_type": "attribute rounding_mode=1 is not supported",
    "name_not_utf8": "the name b'\\xf4hreshold3' is not UTF-8 text",
    "opset_zero": "domain 'qonnx.custom_op.general' has no opset_import version >= 1",
    "opset_old": "ONNX checker: No Op registered for ConvInteger with domain_version of 7",
    "cycle": "cycle",
    "missing_initializer": "'w2'",
    "conv_channels": "node 'conv2' (ConvInteger): input has 4 channels",
    "threshold_channels": "node 'threshold2' (MultiThreshold)",
    "absurd_size": "initializer 'w1': declared shape [100000, 100000, 3, 3]",
    "external_data": "initializer 'input_scale'",
}


def write_npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "<f4") -> Path:
    """A .npy whose header declares `shape` but which holds 16 bytes of data."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": dtype, "fortran_order": False, "shape": shape}
        )
        handle.write(b"\x00" * 16)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


class Payload:
    """Unpickling this writes a marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating the file proves the code ran


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
