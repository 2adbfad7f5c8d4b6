"""One naming scheme for quantized tensors, shared by every graph and by the torch hooks.

A code tensor is named after the module that produces it (`backbone.blocks.0.act`); the shared
residual quantizer is called twice per block, first on the main branch, then on the shortcut.
"""

from __future__ import annotations

RESIDUAL_CALLS = ("res_main", "res_short")


def tensor_name(module_path: str, call_index: int = 0) -> str:
    """Returns the code-tensor name for the `call_index`-th call of the module at `module_path`."""
    if module_path.endswith(".res_quant"):
        return f"{module_path[: -len('.res_quant')]}.{RESIDUAL_CALLS[call_index]}"
    return module_path


def scope_to_name(node_name: str) -> str | None:
    """Maps a Brevitas/torchscript export node name to a code-tensor name (None: a weight quant).

    `/backbone/blocks.0/res_quant/act_quant/export_handler_1/Quant` -> `backbone.blocks.0.res_short`
    """
    parts = [part for part in node_name.split("/") if part]
    if "act_quant" not in parts:
        return None
    index = parts.index("act_quant")
    module_path = ".".join(parts[:index])
    handler = parts[index + 1] if index + 1 < len(parts) else "export_handler"
    call = int(handler.rsplit("_", 1)[1]) if handler.startswith("export_handler_") else 0
    return tensor_name(module_path, call)
