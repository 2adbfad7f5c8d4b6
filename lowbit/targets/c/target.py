"""`lowbit export --target c`: a dependency-free C99 header + source pair from model.int.onnx.

`generate_c` plans the program (plan.py), lays its buffers out in typed scratch pools
(pack.layout_pools) and fills the file frames (templates.py). The generated API (see the
header): `<prefix>_quantize_input` (float32 normalized image -> input codes, the graph's Div +
Quant), `<prefix>_infer_codes` (integer body and head on input codes) and `<prefix>_infer`
(both); each fills a `<prefix>_result` with the head's integers d_c and n, the float64 logits,
their argmax, and the deployed unknown-type score with its known/unknown decision (ood.py; on
the head's input features summed over dihedral views of the input when model.json's ood.views
says so, views.py). `lb_forward` is one pass of the integer body, run once per view.
`<prefix>_model_sizes` lists each layer's weight and threshold bytes.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import onnx

import lowbit
from lowbit.artifacts import DESCRIPTION_FILE, INT_GRAPH_FILE, deployed_bits_of
from lowbit.core.feature_scores import load_export_stats
from lowbit.core.scores import is_feature_score
from lowbit.errors import ConfigError, ModelFileError
from lowbit.io import atomic_write_bytes
from lowbit.targets.c import templates as T
from lowbit.targets.c.ood import LEGACY_SCORE, OodProgram, header_defines, plan_ood
from lowbit.targets.c.ops import build_plan
from lowbit.targets.c.pack import C_SIZES, Slot, c_number, c_type, layout_pools
from lowbit.targets.c.plan import CPlan, Tensor
from lowbit.targets.c.views import scratch_members
from lowbit.targets.reader import read_export

log = logging.getLogger(__name__)

C_DIR = "c"
CONV_KERNEL_NOTES = {
    "bitserial": "bit-serial (AND + popcount over 64-channel words; the weights'\n"
    " * bit planes packed at export, the activations' per layer) where the weights have 1 or 2\n"
    " * bits and input codes of at most 4 bits; int16 dot products elsewhere (lb_conv_dot_*).",
    "scalar": "the scalar reference kernels (one multiply-add per weight and pixel).",
}


def file_names(prefix: str) -> tuple[str, str]:
    """(header, source) file names for a symbol prefix."""
    return f"{prefix}_model.h", f"{prefix}_model.c"


def _layout(plan: CPlan, ood: OodProgram) -> tuple[dict[str, int], dict[str, Slot]]:
    """Scratch pools (elements per C type) and each buffer's slot, from the steps' liveness."""
    slots: dict[str, Slot] = {}
    for index, step in enumerate(plan.steps):
        if step.defines is not None:
            tensor = plan.tensors[step.defines]
            slots[step.defines] = Slot(
                step.defines, c_type(tensor.dtype), tensor.size, index, index
            )
        for root in step.uses:
            slots[root].last = max(slots[root].last, index)
    end = len(plan.steps)  # the result copy and the unknown-type score read the head's tensors
    for tensor in (plan.class_dots, plan.feature_sq, plan.logits, *ood.reads):
        if tensor is not None and tensor.root is not None:
            slots[tensor.root].last = end
    for tensor in ood.buffers:
        slots[tensor.root] = Slot(tensor.root, c_type(tensor.dtype), tensor.size, end, end)
    return layout_pools(list(slots.values())), slots


def _declarations(plan: CPlan, slots: dict[str, Slot], keys: set[str]) -> str:
    """C pointers into the scratch pools of the buffers `keys`, in slot order."""
    return "".join(
        f"    {slot.ctype} *{plan.tensors[key].var} = s->{T.SHORT_TYPES[slot.ctype]}"
        f" + {slot.offset};\n"
        for key, slot in slots.items()
        if key in keys
    )


def _roots(tensors: list[Tensor | None]) -> set[str]:
    return {t.root for t in tensors if t is not None and t.root is not None}


def _result_code(plan: CPlan, classes: int) -> str:
    feature_sq = f"(int64_t){plan.feature_sq.var}[0]" if plan.feature_sq is not None else "0"
    return (
        f"    for (i = 0; i < {classes}; ++i) {{\n"
        f"        result->class_dots[i] = (int64_t){plan.class_dots.var}[i];\n"
        f"        result->logits[i] = {plan.logits.var}[i];\n    }}\n"
        f"    result->feature_sq = {feature_sq};\n"
        "    result->argmax = 0;\n"
        f"    for (i = 1; i < {classes}; ++i)\n"
        "        if (result->logits[i] > result->logits[result->argmax]) result->argmax = (int)i;\n"
    )


def _sizeof(parts: dict[str, tuple[str, int]], kind: str) -> str:
    return f"sizeof({parts[kind][0]})" if kind in parts else "0"


def _size_comment(plan: CPlan, description: dict) -> str:
    bits = {row["name"]: row for row in deployed_bits_of(description)["layers"]}
    lines = [" * Per layer: packed weight bytes (model.json weight bits), threshold bytes:"]
    for layer, parts in plan.sizes.items():
        weight_bits = bits.get(layer, {}).get("weight_bits", "?")
        lines.append(
            f" *   {layer}: {parts.get('weights', ('', 0))[1]} ({weight_bits} bits), "
            f"{parts.get('thresholds', ('', 0))[1]}"
        )
    return "\n".join(lines) + "\n"


def generate_c(
    model: onnx.ModelProto,
    description: dict,
    *,
    prefix: str = "lowbit",
    label: str = INT_GRAPH_FILE,
    stats: dict | None = None,
    kernel: str = "bitserial",
) -> dict[str, str]:
    """Returns {file name: text} of the C99 header and source for an integer graph.

    `stats`: the feature statistics (lowbit.core.feature_scores.load_export_stats) that
    model.json's "ood" score needs when it is a feature score. `kernel`: "bitserial" (popcount
    kernels for 1- and 2-bit weight layers, c/bitserial.py) or "scalar" (the reference).
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise ConfigError(f"C target: prefix {prefix!r} is not a C identifier")
    plan = build_plan(model, description, label, kernel)
    ood = plan_ood(plan, description.get("ood"), stats, prefix)
    pools, slots = _layout(plan, ood)
    classes = plan.logits.size
    header_name, source_name = file_names(prefix)
    # lb_forward (one pass of the body) declares the steps' buffers, infer_codes what it reads
    # after a pass (the head's values, the score's inputs) and the score's own buffers
    tail = [plan.class_dots, plan.feature_sq, plan.logits, *ood.reads]
    score_buffers = _roots(ood.buffers)
    view_members, view_bytes = scratch_members(plan, prefix) if ood.views > 1 else ("", 0)
    size_rows = "".join(
        f'    {{"{layer}", {_sizeof(parts, "weights")}, {_sizeof(parts, "thresholds")}}},\n'
        for layer, parts in plan.sizes.items()
    )
    code_type = c_type(plan.code_dtype)
    input_size = math.prod(plan.input_shape)
    scratch_bytes = (
        input_size * plan.code_dtype.itemsize
        + view_bytes
        + sum(elements * C_SIZES[ctype] for ctype, elements in pools.items())
    )
    fields = {
        "prefix": prefix,
        "PREFIX": prefix.upper(),
        "lowbit_version": lowbit.__version__,
        "header": header_name,
    }
    channels, height, width = plan.input_shape[1:]
    header = T.HEADER.substitute(
        fields,
        guard=f"{prefix.upper()}_MODEL_H",
        recipe=description.get("recipe", {}).get("name", "?"),
        backbone=description.get("model", {}).get("backbone", "?"),
        head=description.get("head", {}).get("head", "?"),
        classes=classes,
        input_shape="x".join(str(d) for d in plan.input_shape[1:]),
        weight_bytes=sum(p.get("weights", ("", 0))[1] for p in plan.sizes.values()),
        threshold_bytes=sum(p.get("thresholds", ("", 0))[1] for p in plan.sizes.values()),
        ood_bytes=ood.stats_bytes,
        scratch_bytes=scratch_bytes,
        size_comment=_size_comment(plan, description),
        ood_defines=header_defines(ood, description.get("ood"), prefix),
        conv_kernels=CONV_KERNEL_NOTES[kernel],
        channels=channels,
        height=height,
        width=width,
        input_size=input_size,
        input_scale=c_number(plan.input_scale, np.float32),
        code_type=code_type,
        input_bits=plan.input_bits,
        pool_members=view_members
        + "".join(
            f"    {ctype} {T.SHORT_TYPES[ctype]}[{elements}];\n"
            for ctype, elements in pools.items()
        ),
    )
    source = T.SOURCE.substitute(
        fields,
        constants="\n".join(plan.constants + ood.constants),
        size_rows=size_rows,
        size_count=len(plan.sizes),
        kernels="\n".join({**plan.kernels, **ood.kernels}.values()),
        quantize_body=plan.quantize_body,
        forward_declarations=_declarations(plan, slots, set(slots) - score_buffers),
        body="".join(step.code for step in plan.steps),
        declarations=_declarations(plan, slots, _roots(tail) | score_buffers),
        tail=_result_code(plan, classes) + ood.code,
    )
    return {header_name: header, source_name: source}


def write_c_target(
    export_dir: str | Path, description: dict, *, prefix: str = "lowbit", kernel: str = "bitserial"
) -> list[Path]:
    """Writes `<export_dir>/c/<prefix>_model.{h,c}` from model.int.onnx; returns their paths.

    A feature score in model.json's "ood" reads its statistics (model.ood.npz) here;
    ModelFileError names the file when they are missing or altered.
    """
    export_dir = Path(export_dir)
    export = read_export(export_dir)  # the checked graph, external data refused
    ood = description.get("ood") or {}
    stats = None
    if is_feature_score(ood.get("score") or LEGACY_SCORE):
        stats = load_export_stats(export_dir, description)
        if stats is None:
            raise ModelFileError(
                f"{export_dir / DESCRIPTION_FILE}: ood.score {ood['score']!r} needs ood.stats "
                "(the feature statistics file); re-export the model with them"
            )
    files = generate_c(
        export.model,
        description,
        prefix=prefix,
        label=str(export.graph_path),
        stats=stats,
        kernel=kernel,
    )
    paths = [
        atomic_write_bytes(export_dir / C_DIR / name, text.encode()) for name, text in files.items()
    ]
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths
