"""Compile the C target with the system compiler and run it through ctypes (tests, benchmarks).

`compile_c_target` builds a shared library from `<prefix>_model.c`; `CModel` loads it and runs
a float32 batch image by image, returning the head's integers, the logits, the argmax, the
unknown-type score and decision, and with `keep_intermediates` every tensor the C code computed
(its debug tap), by graph name.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx

from lowbit.errors import ConfigError, InputError
from lowbit.targets.c.target import file_names

CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-ffp-contract=off")
"""-Werror keeps the generated code warning-free; -ffp-contract=off keeps the float tail's
multiplications and divisions separate IEEE operations (no FMA), as numpy computes them."""


def find_compiler() -> str | None:
    """$CC, else the first of cc, gcc, clang on PATH (None: no C compiler)."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return next((path for name in candidates if (path := shutil.which(name))), None)


def compile_c_target(
    c_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    prefix: str = "lowbit",
    opt: str = "-O2",  # optimization flags, space-separated
    tap: bool = False,
    defines: tuple[str, ...] = (),  # e.g. ("LOWBIT_NO_BUILTIN_POPCOUNT",)
) -> Path:
    """Compiles `<c_dir>/<prefix>_model.c` into the shared library `out`; returns its path."""
    compiler = find_compiler()
    if compiler is None:
        raise ConfigError("no C compiler found (set CC, or install cc/gcc/clang)")
    source = Path(c_dir) / file_names(prefix)[1]
    out = Path(out)
    macros = [f"-D{name}" for name in defines]
    macros += [f"-D{prefix.upper()}_ENABLE_TAP"] if tap else []
    command = [compiler, *opt.split(), *CFLAGS, *macros, "-fPIC", "-shared", str(source)]
    command += ["-o", str(out), "-lm"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"{source}: {compiler} failed:\n{result.stderr.strip()}")
    return out


class CModel:
    """A compiled C target, called image by image through ctypes."""

    def __init__(self, library: str | os.PathLike, classes: int, *, prefix: str = "lowbit"):
        self.lib = ctypes.CDLL(str(library))
        self.prefix, self.classes = prefix, classes

        class Result(ctypes.Structure):
            _fields_ = [
                ("class_dots", ctypes.c_int64 * classes),
                ("feature_sq", ctypes.c_int64),
                ("logits", ctypes.c_double * classes),
                ("argmax", ctypes.c_int),
                ("ood_score", ctypes.c_double),
                ("known", ctypes.c_int),
            ]

        self.result = Result()
        scratch_bytes = ctypes.c_ulong.in_dll(self.lib, f"{prefix}_scratch_bytes").value
        self.scratch = ctypes.create_string_buffer(scratch_bytes)  # malloc-aligned
        self.infer = getattr(self.lib, f"{prefix}_infer")
        self.infer.argtypes = [ctypes.c_void_p, ctypes.POINTER(Result), ctypes.c_void_p]
        self.infer.restype = ctypes.c_int
        self._taps: dict[str, list[np.ndarray]] = {}
        self._tap_fn = None

    def layer_sizes(self) -> dict[str, tuple[int, int]]:
        """{layer: (weight bytes, threshold bytes)} from the library's `<prefix>_model_sizes`."""

        class Size(ctypes.Structure):
            _fields_ = [
                ("name", ctypes.c_char_p),
                ("weight_bytes", ctypes.c_ulong),
                ("threshold_bytes", ctypes.c_ulong),
            ]

        count = ctypes.c_int.in_dll(self.lib, f"{self.prefix}_model_size_count").value
        rows = (Size * count).in_dll(self.lib, f"{self.prefix}_model_sizes")
        return {row.name.decode(): (row.weight_bytes, row.threshold_bytes) for row in rows}

    def _set_tap(self, enabled: bool) -> None:
        try:
            pointer = ctypes.c_void_p.in_dll(self.lib, f"{self.prefix}_tap")
        except ValueError:
            raise ConfigError("keep_intermediates needs a library compiled with tap=True") from None
        if self._tap_fn is None:
            self._tap_fn = self._make_tap()
        pointer.value = ctypes.cast(self._tap_fn, ctypes.c_void_p).value if enabled else None

    def _make_tap(self):
        callback_type = ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong
        )

        def tap(name: bytes, onnx_type: int, data: int, count: int) -> None:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_type))
            buffer = (ctypes.c_char * (count * dtype.itemsize)).from_address(data)
            values = np.frombuffer(buffer, dtype=dtype).copy()
            self._taps.setdefault(name.decode(), []).append(values)

        return callback_type(tap)  # kept in self._tap_fn while the library may call it

    def run(self, x: np.ndarray, *, keep_intermediates: bool = False) -> dict[str, np.ndarray]:
        """Per image of a float32 [N, C, H, W] batch: class_dots, feature_sq, logits, argmax,
        ood_score (float64) and known (bool).

        With keep_intermediates (a library compiled with `tap=True`), also `tensors`: {graph
        tensor name: [N, elements]} of every tensor the C code computed.
        """
        if x.dtype != np.float32 or x.ndim != 4:
            raise InputError(
                f"C target input must be float32 [N, C, H, W], got {x.dtype} {x.shape}"
            )
        x = np.ascontiguousarray(x)
        if keep_intermediates or self._tap_fn is not None:
            self._set_tap(keep_intermediates)
        self._taps.clear()
        n = len(x)
        out = {
            "class_dots": np.zeros((n, self.classes), np.int64),
            "feature_sq": np.zeros(n, np.int64),
            "logits": np.zeros((n, self.classes), np.float64),
            "argmax": np.zeros(n, np.int64),
            "ood_score": np.zeros(n, np.float64),
            "known": np.zeros(n, bool),
        }
        for i in range(n):
            returned = self.infer(x[i].ctypes.data, ctypes.byref(self.result), self.scratch)
            out["class_dots"][i] = self.result.class_dots[:]
            out["feature_sq"][i] = self.result.feature_sq
            out["logits"][i] = self.result.logits[:]
            out["argmax"][i] = returned
            out["ood_score"][i] = self.result.ood_score
            out["known"][i] = self.result.known != 0
        if keep_intermediates:
            out["tensors"] = {name: np.stack(values) for name, values in self._taps.items()}
        return out
