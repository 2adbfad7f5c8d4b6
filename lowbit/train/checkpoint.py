"""checkpoint.pt: a plain dict of tensors and ints, written atomically, loaded weights_only.

Keys: "model" (state_dict), "quant_state" (activation-scale statistics, see below), "optimizer"
(optimizer.state_dict()), "step" (optimizer steps taken), "epoch" (epochs completed), "rng"
(torch, numpy and python RNG states as tensors) and "config" ({"recipe", "model"} dicts: a w1a2
checkpoint has the same tensor names and shapes as a w2a2 one, so only this tells them apart).
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.artifacts import CHECKPOINT_FILE
from lowbit.errors import ConfigError, ModelFileError
from lowbit.io import atomic_write_bytes

logger = logging.getLogger(__name__)


def _runtime_stats_modules(model: nn.Module) -> dict[str, nn.Module]:
    # Brevitas' ParameterFromRuntimeStatsScaling, recognized by shape rather than by class name:
    # only lowbit.quant names Brevitas classes.
    return {
        name: module
        for name, module in model.named_modules()
        if all(
            hasattr(module, key) for key in ("collect_stats_steps", "counter", "buffer", "value")
        )
    }


def runtime_stats_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Returns every activation-scale module's step counter, statistics buffer and raw value.

    Brevitas keeps the step counter as a plain attribute, drops the buffer from state_dict and,
    on load, ends statistics collection. A checkpoint taken inside the first ACT_STATS_STEPS
    steps would resume differently from an uninterrupted run without these three.
    """
    state = {}
    for name, module in _runtime_stats_modules(model).items():
        state[f"{name}.counter"] = torch.tensor(int(module.counter), dtype=torch.int64)
        state[f"{name}.buffer"] = module.buffer.detach().clone()
        state[f"{name}.value"] = module.value.detach().clone()
    return state


def restore_runtime_stats(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Puts back what `runtime_stats_state` saved (after load_state_dict, which resets it)."""
    with torch.no_grad():
        for name, module in _runtime_stats_modules(model).items():
            module.counter = int(state[f"{name}.counter"])
            module.buffer.copy_(state[f"{name}.buffer"])
            module.value.copy_(state[f"{name}.value"])


def rng_state() -> dict[str, torch.Tensor]:
    """Returns the torch, numpy and python global RNG states as tensors."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    _, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": torch.tensor(pos),
        "numpy_has_gauss": torch.tensor(has_gauss),
        "numpy_gauss": torch.tensor(gauss, dtype=torch.float64),
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if py_gauss is None else py_gauss),
    }


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restores the states `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    gauss = float(state["python_gauss"])
    random.setstate((3, tuple(int(v) for v in state["python"]), None if np.isnan(gauss) else gauss))


def model_identity(model: nn.Module) -> dict:
    """{"recipe", "model"}: the recipe and model config dicts a checkpoint's weights belong to."""
    return {"recipe": model.recipe.to_dict(), "model": model.config.to_dict()}


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int, epoch: int
) -> None:
    """Writes checkpoint.pt atomically (see the module docstring for its keys)."""
    checkpoint = {
        "model": model.state_dict(),
        "quant_state": runtime_stats_state(model),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "epoch": int(epoch),
        "rng": rng_state(),
        "config": model_identity(model),
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Returns a checkpoint dict loaded with weights_only=True; ModelFileError names the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean "not a usable checkpoint"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{path}: cannot load checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ModelFileError(f"{path}: not a lowbit checkpoint (no 'model' state dict)")
    return checkpoint


def load_model_state(model: nn.Module, checkpoint: dict, path: Path) -> None:
    """Loads the checkpoint's weights and activation-scale state into `model`, all or nothing."""
    saved, current = checkpoint.get("config"), model_identity(model)
    if saved is not None and saved != current:  # checkpoints before this key pass
        fields = [
            f"{part}.{key}"
            for part in current
            for key in sorted(set(current[part]) | set(saved.get(part, {})))
            if current[part].get(key) != saved.get(part, {}).get(key)
        ]
        raise ModelFileError(
            f"{path}: weights do not fit the model of config.json: trained as "
            f"{saved.get('recipe', {}).get('name')!r}, config.json asks for "
            f"{current['recipe']['name']!r}; they differ in {fields[:4]}"
        )
    try:
        missing, unexpected = model.load_state_dict(checkpoint["model"], strict=False)
    except RuntimeError as error:  # shape mismatches raise even with strict=False
        detail = str(error).strip().splitlines()[-1].strip()
        raise ModelFileError(
            f"{path}: weights do not fit the model of config.json ({detail})"
        ) from None
    quant_state = checkpoint.get("quant_state", {})
    stats_values = {f"{name}.value" for name in _runtime_stats_modules(model)}
    # An untrained scale's value is left out of state_dict by Brevitas; quant_state carries it.
    missing = [key for key in missing if key not in stats_values]
    expected_quant = set(runtime_stats_state(model))
    if missing or unexpected or set(quant_state) != expected_quant:
        keys = (missing or unexpected or sorted(expected_quant ^ set(quant_state)))[:3]
        raise ModelFileError(f"{path}: weights do not fit the model of config.json (keys {keys})")
    restore_runtime_stats(model, quant_state)


def init_from_run(model: nn.Module, run_dir: Path) -> list[str]:
    """Copies every tensor of run_dir/checkpoint.pt whose name is also in `model`; returns names.

    The transfer path: a float run's conv, BN and head tensors start a quantized run (Brevitas
    keeps a quantized conv's float weight under the same `...weight` key). Activation scales are
    skipped and measured afresh from statistics. Same name, different shape is a ConfigError.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    if not run_dir.is_dir() or not path.is_file():
        raise ConfigError(
            f"init run {run_dir}: no {CHECKPOINT_FILE}; pass a finished run directory"
        )
    source = load_checkpoint(path)["model"]
    skip = tuple(f"{name}." for name in _runtime_stats_modules(model))
    target = {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.startswith(skip)}
    copied = []
    with torch.no_grad():
        for key, tensor in target.items():
            if key not in source:
                continue
            if source[key].shape != tensor.shape:
                raise ConfigError(
                    f"init run {path}: {key} has shape {tuple(source[key].shape)}, this model needs"
                    f" {tuple(tensor.shape)}; use the same backbone, width and classes"
                )
            tensor.copy_(source[key])
            copied.append(key)
    if not copied:
        raise ConfigError(
            f"init run {path}: no tensor name matches this model; wrong run directory?"
        )
    logger.info("init from %s: copied %d of %d tensors", path, len(copied), len(target))
    logger.info("copied: %s", ", ".join(copied))
    return copied
