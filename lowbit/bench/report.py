"""results.json, results.csv and report.md of a bench sweep; the summary table README quotes.

results.json (keys stable, snake_case): schema_version, options, wall_seconds, machine, rows
(one per recipe x head x loss x seed, see lowbit.bench.sweep.run_config), summary (one per
recipe x head x loss: means and sample standard deviations over seeds), anchor (the w1a2 vs w2a2
accuracy gap here and in Brevitas' BNN-PYNQ CNV on CIFAR-10).
"""

from __future__ import annotations

import csv
import io
import os
import platform
import statistics
from pathlib import Path

import torch

from lowbit.artifacts import RESULTS_FILE
from lowbit.core.scores import SCORES
from lowbit.io import atomic_write_bytes, atomic_write_json

# 2: a row's and a summary entry's `model_bits` renamed `deployed_bits`
SCHEMA_VERSION = 2
# Brevitas BNN-PYNQ CNV on CIFAR-10 (brevitas_examples/bnn_pynq README): top-1 accuracy.
ANCHOR = {
    "source": "Brevitas BNN-PYNQ CNV, CIFAR-10 (brevitas_examples/bnn_pynq)",
    "w2a2": 89.03,
    "w1a2": 87.80,
    "gap_points": round(89.03 - 87.80, 2),
}


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std


def _get(row: dict, *keys: str):
    value = row
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def summarize(rows: list[dict]) -> list[dict]:
    """Returns one entry per (recipe, head, loss): mean/std over seeds of every number."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["recipe"], row["head"], row["loss"]), []).append(row)
    summary = []
    for (recipe, head, loss), group in groups.items():
        entry = {"recipe": recipe, "head": head, "loss": loss, "seeds": len(group)}
        mean, std = _mean_std([r["accuracy"] for r in group])
        entry["accuracy_mean"], entry["accuracy_std"] = mean, std
        for score in SCORES:
            for metric in ("auroc", "fpr95"):
                m, s = _mean_std([_get(r, "ood", score, metric) for r in group])
                entry[f"{score}_{metric}_mean"], entry[f"{score}_{metric}_std"] = m, s
        deployed = group[0].get("ood_default") or "msp"
        entry["ood_default"] = deployed
        for metric in ("auroc", "fpr95"):
            m, s = _mean_std([_get(r, "ood", deployed, metric) for r in group])
            entry[f"deployed_{metric}_mean"], entry[f"deployed_{metric}_std"] = m, s
        for shot in ("1", "5"):
            m, s = _mean_std([_get(r, "fewshot", "shots", shot, "mean") for r in group])
            entry[f"fewshot_{shot}shot_mean"], entry[f"fewshot_{shot}shot_std"] = m, s
        entry["fewshot_way"] = _get(group[0], "fewshot", "way")
        entry["deployed_bits"] = group[0]["deployed_bits"]["total"]
        entry["bops"] = group[0]["bops"]["total"]
        layers = group[0].get("layers") or []
        widths = [layer["accumulator_bits"] for layer in layers if layer["accumulator_bits"]]
        entry["accumulator_bits"] = widths or None
        for batch in ("1", "64"):
            entry[f"latency_ms_batch{batch}"] = _mean_std(
                [_get(r, "latency_ms", batch) for r in group]
            )[0]
        verified = [r["verify"] for r in group if r.get("verify")]
        entry["verify_ok"] = all(v["ok"] for v in verified) if verified else None
        entry["verify_unexplained"] = sum(v["unexplained"] for v in verified) if verified else None
        summary.append(entry)
    return summary


def anchor_gap(summary: list[dict]) -> dict:
    """Returns the anchor and our w2a2 - w1a2 accuracy gap (points) per head x loss present."""
    ours = []
    for entry in summary:
        if entry["recipe"] != "w1a2":
            continue
        for other in summary:
            if other["recipe"] == "w2a2" and (other["head"], other["loss"]) == (
                entry["head"],
                entry["loss"],
            ):
                gap = 100 * (other["accuracy_mean"] - entry["accuracy_mean"])
                ours.append(
                    {
                        "head": entry["head"],
                        "loss": entry["loss"],
                        "w2a2": round(100 * other["accuracy_mean"], 2),
                        "w1a2": round(100 * entry["accuracy_mean"], 2),
                        "gap_points": round(gap, 2),
                        "beats_anchor": gap <= ANCHOR["gap_points"],
                    }
                )
    return {"reference": ANCHOR, "ours": ours}


def build_results(options, rows: list[dict], *, wall_seconds: float) -> dict:
    """Returns the results.json dict."""
    summary = summarize(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "options": options.to_dict(),
        "wall_seconds": round(wall_seconds, 1),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "rows": rows,
        "summary": summary,
        "anchor": anchor_gap(summary),
    }


CSV_COLUMNS = [
    "recipe", "head", "loss", "seed", "accuracy",
    *[f"{s}_{m}" for s in SCORES for m in ("auroc", "fpr95")],
    "fewshot_way", "fewshot_1shot", "fewshot_5shot", "deployed_bits", "weight_bits_total",
    "threshold_bits_total", "bops", "max_accumulator_bits", "latency_ms_batch1",
    "latency_ms_batch64", "verify_unexplained", "train_seconds",
]  # fmt: skip


def csv_text(rows: list[dict]) -> str:
    """Returns results.csv: one line per run (recipe x head x loss x seed)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        layers = row.get("layers") or []
        widths = [layer["accumulator_bits"] for layer in layers if layer["accumulator_bits"]]
        line = {key: row.get(key) for key in ("recipe", "head", "loss", "seed", "accuracy")}
        for score in SCORES:
            for metric in ("auroc", "fpr95"):
                line[f"{score}_{metric}"] = _get(row, "ood", score, metric)
        line["fewshot_way"] = _get(row, "fewshot", "way")
        for shot in ("1", "5"):
            line[f"fewshot_{shot}shot"] = _get(row, "fewshot", "shots", shot, "mean")
        line["deployed_bits"] = row["deployed_bits"]["total"]
        line["weight_bits_total"] = row["deployed_bits"]["weights"]
        line["threshold_bits_total"] = row["deployed_bits"]["thresholds"]
        line["bops"] = row["bops"]["total"]
        line["max_accumulator_bits"] = max(widths) if widths else None
        line["latency_ms_batch1"] = _get(row, "latency_ms", "1")
        line["latency_ms_batch64"] = _get(row, "latency_ms", "64")
        line["verify_unexplained"] = _get(row, "verify", "unexplained")
        line["train_seconds"] = row.get("train_seconds")
        writer.writerow(line)
    return buffer.getvalue()


def _pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None:
        return "–"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std else "")


def summary_table(results: dict) -> str:
    """Returns the Markdown summary table (the one README's Results section quotes)."""
    way = next((e["fewshot_way"] for e in results["summary"] if e["fewshot_way"]), None)
    shot = f"{way}-way " if way else ""
    lines = [
        "| recipe | head | loss | accuracy % | MSP AUROC | MSP FPR95 | deployed score | "
        "deployed AUROC | deployed FPR95 | "
        f"{shot}1-shot % | {shot}5-shot % | deployed bits | BOPs (M) | accumulator bits | "
        "runtime ms (b1 / b64) | verify |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["summary"]:
        acc = "–" if not e["accumulator_bits"] else "/".join(map(str, e["accumulator_bits"]))
        lat = "–"
        if e["latency_ms_batch1"] is not None:
            lat = f"{e['latency_ms_batch1']:.2f} / {e['latency_ms_batch64']:.1f}"
        verify = "–" if e["verify_ok"] is None else ("0 unexplained" if e["verify_ok"] else "FAIL")
        lines.append(
            f"| {e['recipe']} | {e['head']} | {e['loss']} | "
            f"{_pm(e['accuracy_mean'], e['accuracy_std'], 100)} | "
            f"{_pm(e['msp_auroc_mean'], e['msp_auroc_std'], digits=3)} | "
            f"{_pm(e['msp_fpr95_mean'], e['msp_fpr95_std'], digits=3)} | "
            f"{e.get('ood_default') or '–'} | "
            f"{_pm(e.get('deployed_auroc_mean'), e.get('deployed_auroc_std'), digits=3)} | "
            f"{_pm(e.get('deployed_fpr95_mean'), e.get('deployed_fpr95_std'), digits=3)} | "
            f"{_pm(e['fewshot_1shot_mean'], e['fewshot_1shot_std'], 100)} | "
            f"{_pm(e['fewshot_5shot_mean'], e['fewshot_5shot_std'], 100)} | "
            f"{e['deployed_bits']:,} | {e['bops'] / 1e6:,.1f} | {acc} | {lat} | {verify} |"
        )
    return "\n".join(lines) + "\n"


def anchor_text(results: dict) -> str:
    """Returns one sentence per head x loss: our w1a2-vs-w2a2 gap against BNN-PYNQ's."""
    ref = results["anchor"]["reference"]
    lines = []
    for gap in results["anchor"]["ours"]:
        verdict = "beats" if gap["beats_anchor"] else "does not beat"
        lines.append(
            f"w1a2 vs w2a2 ({gap['head']}, {gap['loss']}): {gap['w1a2']:.2f} vs {gap['w2a2']:.2f} "
            f"→ gap {gap['gap_points']:+.2f} points; anchor {ref['source']}: "
            f"{ref['w1a2']:.2f} vs {ref['w2a2']:.2f} → {ref['gap_points']:.2f} points "
            f"({verdict} the anchor)."
        )
    return "\n".join(lines) or "(w1a2 and w2a2 not both in the sweep: no gap to report)"


def markdown(results: dict, plots: dict[str, str], command: str | None = None) -> str:
    """Returns report.md: options, summary table, anchor gap, plots."""
    options = results["options"]
    learned = ", cosine scale learned" if options.get("learn_scale") else ""
    parts = ["# lowbit bench", ""]
    if command:
        parts += [f"`{command}`", ""]
    parts += [
        f"Data `{options['data']}`, {options['epochs']} epochs, {options['seeds']} seed(s), "
        f"image size {options['image_size']}{learned}; wall time "
        f"{results['wall_seconds'] / 60:.1f} min "
        f"on {results['machine']['cpu_count']} CPU cores.",
        "",
        summary_table(results),
        "Accuracy: mean ± sample std over seeds. Deployed bits: weights + thresholds as stored "
        "(model.json); BOPs: MACs × weight bits × activation bits per inference; accumulator "
        "bits per conv; runtime: lowbit integer runtime, median wall time.",
        "",
        anchor_text(results),
        "",
    ]
    for title, name in plots.items():
        parts += [f"![{title}]({name})", ""]
    return "\n".join(parts)


def readme_section(results: dict, command: str | None = None) -> str:
    """Returns README's "Recipe sweep" subsection: the command, the summary table, the anchor."""
    options, machine = results["options"], results["machine"]
    load = machine.get("load_average")
    load_text = f", load average {load[0]:.1f} at the end" if load else ""
    minutes = results["wall_seconds"] / 60
    timing = f"{minutes:.1f} min wall time"
    if any(row.get("reused") for row in results["rows"]):
        spent = sum(row.get("seconds") or row.get("train_seconds") or 0 for row in results["rows"])
        timing = f"{spent / 60:.1f} min summed over configurations (finished runs reused)"
    command = command or results.get("command") or "lowbit bench"
    return "\n".join(
        [
            f"### Recipe sweep on `{options['data']}` data (`lowbit bench`)",
            f"`{command}`: {len(results['rows'])} configurations, {options['epochs']} epochs, "
            f"{options['seeds']} seed(s); {timing} on {machine['cpu_count']} CPU cores"
            f"{load_text}.",
            "",
            summary_table(results),
            "Accuracy: mean ± sample std over seeds. Few-shot: imprinted prototypes on the "
            "held-out classes (N-way, mean over episodes). Deployed bits: weights + thresholds "
            "as stored (model.json); fp32: 32-bit weights + BatchNorm. BOPs: MACs × weight bits × "
            "activation bits (Baskin et al. 2021; van Baalen et al. 2020). Accumulator bits per "
            "conv layer. Runtime: lowbit's numpy integer runtime, median wall time per call.",
            "",
            anchor_text(results),
            "",
        ]
    )


def write_reports(results: dict, out: Path, plots: dict[str, str], command: str | None = None):
    """Writes results.json, results.csv, report.md and readme_section.md under `out`."""
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_bytes(out / "results.csv", csv_text(results["rows"]).encode())
    atomic_write_bytes(out / "report.md", markdown(results, plots, command).encode())
    atomic_write_bytes(out / "readme_section.md", readme_section(results, command).encode())
