"""Evaluation outputs: the per-object CSV, the summary by modality and by label (median and IQR), box plots."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np

from medsam2.errors import BackendUnavailable, OutputNotWritable
from medsam2.evaluation.runner import ObjectScore

CSV_NAME = "per_object.csv"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "boxplots.png"
METRICS = ("dsc", "nsd")


def check_output_folder(out: Path) -> None:
    """Create ``out`` and prove it is writable before any case runs."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".medsam2-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(f"cannot write the evaluation output folder {out}: {exc.strerror or exc}") from exc


def stats(values: Sequence[float]) -> dict[str, float | int]:
    """n, median, first and third quartile, IQR and mean (NaN-free; empty gives n = 0)."""
    if not values:
        return {"n": 0}
    v = np.asarray(values, float)
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(v.size),
        "median": round(float(median), 6),
        "q1": round(float(q1), 6),
        "q3": round(float(q3), 6),
        "iqr": round(float(q3 - q1), 6),
        "mean": round(float(v.mean()), 6),
    }


def summarise(rows: Sequence[ObjectScore]) -> dict:
    """DSC and NSD overall, by modality and by label."""

    def group(key) -> dict:  # noqa: ANN001
        out: dict = {}
        for value in sorted({key(r) for r in rows}):
            chosen = [r for r in rows if key(r) == value]
            out[str(value)] = {m: stats([getattr(r, m) for r in chosen]) for m in METRICS}
        return out

    return {
        "overall": {m: stats([getattr(r, m) for r in rows]) for m in METRICS},
        "by_modality": group(lambda r: r.modality),
        "by_label": group(lambda r: r.object),
    }


def write_csv(path: Path, rows: Sequence[ObjectScore]) -> Path:
    """One row per object."""
    names = [f.name for f in fields(ObjectScore)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_json())
    return path


def write_summary(path: Path, summary: dict) -> Path:
    """The summary as JSON."""
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path


def write_box_plots(path: Path, rows: Sequence[ObjectScore]) -> Path:
    """DSC and NSD box plots, one box per modality (the paper's figure style)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BackendUnavailable("box plots need matplotlib: pip install 'medsam2-serving[eval]'") from exc
    modalities = sorted({r.modality for r in rows})
    figure, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(modalities), 4), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=False):
        data = [[getattr(r, metric) for r in rows if r.modality == m] for m in modalities]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(modalities) + 1), modalities)
        ax.set_title(metric.upper())
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
