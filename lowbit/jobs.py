"""The main job (`lowbit run`): pre-train fp32, QAT w1a2, export, verify, in one run folder.

The orchestration layer above the stages: it may import any stage, which no stage may do
(DESIGN.md data flow). Its steps are the stages' own workflows (lowbit.train.reuse,
lowbit.deploy, lowbit.verify.run). It returns its result as data and prints nothing: the CLI
words it (lowbit/report_text.py) or prints it as JSON.
"""

from __future__ import annotations

from pathlib import Path

from lowbit.artifacts import deployed_bits_of
from lowbit.deploy import export_run
from lowbit.train.reuse import train_or_reuse
from lowbit.verify.run import verify_run

# Epochs chosen so that `lowbit run` finishes in about 5 minutes on 2 CPU cores.
FP32_EPOCHS = 15
QAT_EPOCHS = 15
MAIN_JOB_QAT_RUN = "w1a2"  # the main job's quantized run folder under its --out


def run_main_job(out: Path, *, quick: bool = False, progress: bool = True) -> dict:
    """Trains fp32 then w1a2 (conv4, cosine, LogitNorm), exports, verifies; returns both runs'
    metrics, the deployed size and verify's counts (the full verify report is
    <out>/w1a2/verify.json)."""
    from lowbit.train import TrainConfig

    fp32_epochs, qat_epochs = (1, 1) if quick else (FP32_EPOCHS, QAT_EPOCHS)
    common = dict(backbone="conv4", head="cosine", loss="logitnorm", seed=0, data="builtin")
    if quick:
        common.update(width=16, per_class=120)
    fp32_dir, qat_dir = out / "fp32", out / MAIN_JOB_QAT_RUN
    fp32 = train_or_reuse(
        TrainConfig(recipe="fp32", epochs=fp32_epochs, **common), fp32_dir, progress
    )
    qat_config = TrainConfig(recipe="w1a2", epochs=qat_epochs, init=str(fp32_dir), **common)
    qat = train_or_reuse(qat_config, qat_dir, progress)
    _, description = export_run(qat_dir)
    report = verify_run(
        qat_dir, n=200 if quick else 1000, random=64 if quick else 1000, progress=progress
    )
    return {
        "out": str(out),
        "epochs": {"fp32": fp32_epochs, "w1a2": qat_epochs},
        "fp32": fp32,
        "w1a2": qat,
        "deployed_bits": deployed_bits_of(description)["total"],
        "verify": {
            k: report[k] for k in ("checked_tensors", "checked_values", "mismatches", "unexplained")
        },
    }
