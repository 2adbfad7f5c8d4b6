"""verify_run: verify an export folder against the trained run it came from."""

from __future__ import annotations

import logging
from pathlib import Path

from lowbit.artifacts import CONFIG_FILE, INT_GRAPH_FILE
from lowbit.manifest import read_description
from lowbit.train.run import load_run, splits_for
from lowbit.verify.api import EXECUTORS, build_inputs, load_graph, verify_export

log = logging.getLogger(__name__)


def verify_run(
    export_dir: str | Path,
    *,
    data: str | None = None,
    n: int = 1000,
    random: int = 1000,
    ties: bool = True,
    seed: int = 0,
    executors: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict:
    """Verifies an exported model against the run it came from (model.json's source_run);
    returns the report that verify.json holds."""
    export_dir = Path(export_dir)
    description = read_description(export_dir)
    run_dir = (export_dir / description.get("source_run", ".")).resolve()
    model, record = load_run(run_dir)
    real = None
    if n > 0:
        if data is not None:  # other data than the run's own: nothing to match
            record = {**record, "data": data, "data_fingerprint": None}
        real = splits_for(record, run_dir / CONFIG_FILE).test.x
    int_graph = load_graph(export_dir / INT_GRAPH_FILE) if ties else None
    inputs = build_inputs(
        description, real, n=n, random=random, ties=ties, seed=seed, int_graph=int_graph
    )
    log.info("verifying on %s", {k: len(v) for k, v in inputs.items()})
    return verify_export(
        model, export_dir, inputs, executors=executors or EXECUTORS, progress=progress
    )
