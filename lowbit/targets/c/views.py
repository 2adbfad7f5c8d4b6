"""Dihedral views in the C target: the unknown-type score on features summed over views.

With model.json's `"ood": {"views": V}` and V > 1 (lowbit/core/views.py), `<prefix>_infer_codes`
runs the integer body on the input codes (view 0: the result's head values, logits and argmax),
then once more on each view 1..V-1 of the codes (`lb_dihedral_view` into `scratch->view_codes`),
adding the head's input features f of every pass into the int64 `scratch->view_features`; the
score then reads that sum instead of f. The input quantizer is elementwise, so a view of the
codes is the codes of the image's view: each pass computes what the runtime computes on
`dihedral_view(x, v)`. The debug tap is switched off for the extra passes, so it reports view
0's tensors, as for V = 1.

Exactness: the sum is an exact int64 array like the runtime's, and the score needs
n = sum_i S_i^2 < 2^53 so that n, and every S_i, converts to double exactly (z = S / sqrt(n) is
then bit-identical to numpy's, ood.py). `check_views` bounds n from the code range of the head's
input (the thresholds' codes passed through casts, reshapes and sums): n <= F (V m)^2 for F
features of absolute value at most m.
"""

from __future__ import annotations

from string import Template

import numpy as np

from lowbit.core.scores import ood_detector
from lowbit.errors import ModelFileError
from lowbit.targets.c.pack import c_type
from lowbit.targets.c.plan import CPlan, Tensor

EXACT_DOUBLE = 2**53  # every integer below is exact in IEEE-754 double
RANGE_OPS = ("Cast", "Flatten", "Reshape", "ReduceSum")  # integer ops whose output range follows

DIHEDRAL_VIEW = Template("""\
/* View `view` (0..7) of CHW codes, as lowbit/core/views.py's dihedral_view: bit 0 flips
   left-right, bit 1 up-down, bit 2 transposes after the flips (h == w). */
static void lb_dihedral_view(const $X *restrict x, int channels, int h, int w, int view,
                             $X *restrict y)
{
    int c, row, col;
    for (c = 0; c < channels; ++c) {
        const $X *plane = x + (long)c * h * w;
        for (row = 0; row < h; ++row) {
            for (col = 0; col < w; ++col) {
                int sy = view & 4 ? col : row, sx = view & 4 ? row : col;
                if (view & 1) sx = w - 1 - sx;
                if (view & 2) sy = h - 1 - sy;
                *y++ = plane[(long)sy * w + sx];
            }
        }
    }
}
""")


def _code_range(plan: CPlan, name: str) -> tuple[int, int] | None:
    """Returns (low, high) of the integer tensor `name`, or None when no code range reaches it."""
    if name in plan.code_ranges:
        return plan.code_ranges[name]
    node, tensor = plan.producer.get(name), plan.tensors.get(name)
    if node is None or node.op_type not in RANGE_OPS or tensor is None:
        return None
    if tensor.dtype.kind not in "iu":
        return None
    source = _code_range(plan, node.input[0])
    if source is None:
        return None
    low, high = source
    if node.op_type == "ReduceSum":
        count = plan.tensors[node.input[0]].size // tensor.size
        low, high = low * count, high * count
    info = np.iinfo(tensor.dtype)
    return (low, high) if info.min <= low and high <= info.max else None  # no wrap-around


def feature_bound(plan: CPlan) -> int | None:
    """Returns the largest |f_i| of the head's input features, or None when it is not known."""
    codes = _code_range(plan, plan.head_input.name)
    return None if codes is None else max(abs(codes[0]), abs(codes[1]))


def check_views(plan: CPlan, ood: dict, name: str) -> int:
    """Returns model.json's ood.views for score `name`; ModelFileError naming the field unless
    the score reads views, the input is square where views transpose, and n stays exact."""
    where = "model.json: ood.views"
    try:
        views = ood_detector({**ood, "score": name})[1]
    except ValueError as error:
        raise ModelFileError(str(error)) from None
    if views == 1:
        return views
    height, width = plan.input_shape[2:]
    if views >= 4 and height != width:
        raise ModelFileError(
            f"{where}: {views} views transpose the input, which needs a square input, not "
            f"{height}x{width}; choose 2 views or re-export with a square input"
        )
    bound, features = feature_bound(plan), plan.head_input.size
    if bound is None:
        raise ModelFileError(
            f"{where}: {views} views need a bound on the head's input features, and no "
            f"threshold's code range reaches them in {plan.label}"
        )
    if features * (views * bound) ** 2 >= EXACT_DOUBLE:
        raise ModelFileError(
            f"{where}: the square sum of {features} features summed over {views} views (codes "
            f"up to {bound}) may reach 2^53, where the score is no longer exact; use fewer views"
        )
    return views


def summed_features(plan: CPlan) -> Tensor:
    """The int64 head-input features summed over the views, a member of the scratch struct."""
    shape = (plan.head_input.size,)
    return Tensor("ood.view_features", np.dtype(np.int64), shape, "s->view_features", None)


def scratch_members(plan: CPlan, prefix: str) -> tuple[str, int]:
    """(C members, bytes) the views add to the scratch struct: one view's input codes and the
    summed features."""
    members = (
        f"    {prefix}_code_t view_codes[{prefix.upper()}_INPUT_SIZE]; /* a view's input codes */\n"
        f"    int64_t view_features[{plan.head_input.size}]; /* head-input features summed over "
        "the views */\n"
    )
    size = int(np.prod(plan.input_shape)) * plan.code_dtype.itemsize + 8 * plan.head_input.size
    return members, size


def views_code(plan: CPlan, prefix: str) -> tuple[str, dict[str, str]]:
    """(C statements, kernels) after view 0's result copy: the body on views 1..V-1, their
    head-input features summed into `summed_features`."""
    f, total, upper = plan.head_input, summed_features(plan), prefix.upper()
    channels, height, width = plan.input_shape[1:]
    accumulate = f"for (i = 0; i < {f.size}; ++i) {total.var}[i]"
    code = (
        f"    {accumulate} = (int64_t){f.var}[i];\n"
        "    {\n"
        "        int view;\n"
        f"#ifdef {upper}_ENABLE_TAP\n"
        f"        {prefix}_tap_fn tap = {prefix}_tap; /* the tap reports view 0's tensors */\n"
        f"        {prefix}_tap = NULL;\n"
        "#endif\n"
        f"        for (view = 1; view < {upper}_OOD_VIEWS; ++view) {{\n"
        f"            lb_dihedral_view(codes, {channels}, {height}, {width}, view, "
        "s->view_codes);\n"
        "            lb_forward(s->view_codes, s);\n"
        f"            {accumulate} += (int64_t){f.var}[i];\n"
        "        }\n"
        f"#ifdef {upper}_ENABLE_TAP\n"
        f"        {prefix}_tap = tap;\n"
        "#endif\n"
        "    }\n"
    )
    kernel = DIHEDRAL_VIEW.substitute(X=c_type(plan.code_dtype))
    return code, {"dihedral_view": kernel}
