"""Pure helpers of the C target: bit packing, integer type choice, C literals, scratch layout.

Weights are stored as a little-endian bit stream of `bits`-wide fields, so a layer of n weights
takes exactly ceil(n · bits / 8) bytes (model.json's `deployed_bits` for weights, rounded up per
layer): 1-bit bipolar codes {-1, +1} as bits {0, 1}; every other width as two's complement. The C
reader (`lb_weight` in templates.py) is the inverse of `pack_codes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lowbit.errors import ConfigError

C_TYPES = {
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int16): "int16_t",
    np.dtype(np.uint16): "uint16_t",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.int64): "int64_t",
    np.dtype(np.uint64): "uint64_t",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
C_SIZES = {name: dtype.itemsize for dtype, name in C_TYPES.items()}
SIGNED_INTS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))


def c_type(dtype: np.dtype) -> str:
    """The C99 <stdint.h> type of a numpy dtype (ConfigError for types the target lacks)."""
    try:
        return C_TYPES[np.dtype(dtype)]
    except KeyError:
        raise ConfigError(f"C target: no C type for tensor dtype {np.dtype(dtype)}") from None


def smallest_signed(values: np.ndarray) -> np.dtype:
    """The narrowest of int8/16/32/64 that holds every value (int8 for an empty array)."""
    low = int(values.min()) if values.size else 0
    high = int(values.max()) if values.size else 0
    for dtype in SIGNED_INTS:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    raise ConfigError(f"C target: values in [{low}, {high}] do not fit int64")


def weight_field(codes: np.ndarray, bits: int, where: str) -> np.ndarray:
    """Unsigned `bits`-wide fields of integer codes (bipolar for 1 bit, else two's complement)."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if not 1 <= bits <= 16:
        raise ConfigError(f"C target: {where}: weight_bits={bits}, supported are 1 .. 16")
    if bits == 1:
        if not np.all(np.abs(codes) == 1):
            raise ConfigError(f"C target: {where}: 1-bit weights must be bipolar codes -1/+1")
        return (codes > 0).astype(np.uint64)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if codes.size and (codes.min() < low or codes.max() > high):
        raise ConfigError(
            f"C target: {where}: weight codes in [{codes.min()}, {codes.max()}] do not fit "
            f"{bits} signed bits (model.json weight_bits)"
        )
    return (codes & (2**bits - 1)).astype(np.uint64)


def pack_codes(codes: np.ndarray, bits: int, where: str = "weights") -> bytes:
    """Packs integer codes (C order) into ceil(n · bits / 8) bytes, field i at bit i · bits."""
    fields = weight_field(codes, bits, where)
    planes = (fields[:, None] >> np.arange(bits, dtype=np.uint64)[None, :]) & np.uint64(1)
    stream = planes.astype(np.uint8).reshape(-1)  # bit (i * bits + j) = bit j of field i
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_codes(packed: bytes, count: int, bits: int) -> np.ndarray:
    """The inverse of `pack_codes` (int64 codes), for tests and readers."""
    stream = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")
    planes = stream[: count * bits].reshape(count, bits).astype(np.int64)
    fields = (planes << np.arange(bits, dtype=np.int64)[None, :]).sum(axis=1)
    if bits == 1:
        return np.where(fields > 0, 1, -1)
    return np.where(fields >= 2 ** (bits - 1), fields - 2**bits, fields)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes `pack_codes` writes for `count` codes of `bits` bits."""
    return math.ceil(count * bits / 8)


def c_number(value: float | int, dtype: np.dtype) -> str:
    """A C literal that denotes exactly `value` in `dtype` (hex floats: no decimal rounding)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        text = float(value).hex()
        return f"{text}f" if dtype == np.float32 else text
    value = int(value)
    if dtype == np.uint64:
        return f"UINT64_C(0x{value:016x})"
    if dtype == np.int64:
        # INT64_MIN has no literal of its own in C
        return "INT64_MIN" if value == -(2**63) else f"INT64_C({value})"
    if dtype == np.int32 and value == -(2**31):
        return "INT32_MIN"
    return str(value)


def c_array(name: str, dtype: np.dtype, values: np.ndarray, *, per_line: int = 16) -> str:
    """`static const T name[n] = {...};` with exact literals (raw bytes for uint8)."""
    flat = np.asarray(values).reshape(-1)
    items = [c_number(v, dtype) for v in flat.tolist()] or ["0"]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {c_type(dtype)} {name}[{max(flat.size, 1)}] = {{\n    {body}\n}};\n"


@dataclass
class Slot:
    """A scratch buffer: `size` elements of one C type, live from step `first` to `last`."""

    key: str
    ctype: str
    size: int
    first: int
    last: int
    offset: int = -1


def layout_pools(slots: list[Slot]) -> dict[str, int]:
    """Assigns offsets (first fit, per C type) so that slots live at once never overlap.

    Returns the size in elements of each C type's pool. One pool per type keeps every buffer
    a typed array (no type punning of reused memory, so no strict-aliasing hazard).
    """
    pools: dict[str, int] = {}
    for slot in sorted(slots, key=lambda s: (s.first, -s.size)):
        busy = sorted(
            (other.offset, other.offset + other.size)
            for other in slots
            if other.offset >= 0
            and other.ctype == slot.ctype
            and other.first <= slot.last
            and slot.first <= other.last
        )
        offset = 0
        for start, end in busy:
            if offset + slot.size <= start:
                break
            offset = max(offset, end)
        slot.offset = offset
        pools[slot.ctype] = max(pools.get(slot.ctype, 0), offset + slot.size)
    return pools
