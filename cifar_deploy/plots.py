"""Plots people would rather look at than read: latency against batch size, accuracy against size,
training curves. Matplotlib with the Agg backend (no display needed); each function writes a PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bench(rows: Sequence, path: Path, accuracy_json: Path | None = None) -> Path:
    """Latency (p50) against batch size per artifact/runtime/device, log-log; with a verify JSON,
    a second panel of accuracy against artifact size."""
    plt = _pyplot()
    panels = 2 if accuracy_json else 1
    fig, axes = plt.subplots(1, panels, figsize=(8 * panels, 6), squeeze=False)
    ax = axes[0][0]
    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        if r.status == "ok":
            key = (r.artifact, r.runtime, r.device, r.threads or 0)
            series.setdefault(key, []).append((r.batch_size, r.p50_ms))
    # One colour per artifact and runtime; line style tells the thread count apart.
    curves = sorted({k[:3] for k in series})
    colours = plt.get_cmap("tab20")
    thread_counts = sorted({k[3] for k in series}, reverse=True)
    styles = ["-", "--", ":", "-."]
    for (artifact, runtime, device, threads), points in sorted(series.items()):
        points.sort()
        colour = colours(curves.index((artifact, runtime, device)) % 20)
        style = styles[thread_counts.index(threads) % len(styles)]
        label = f"{artifact} [{runtime}, {device}, {threads or 'all'} thr]"
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            style,
            marker="o",
            color=colour,
            label=label,
            markersize=4,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="p50 latency (ms)",
        title="Latency against batch size",
    )
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=6, loc="upper left", ncol=1 if len(series) < 12 else 2)
    if accuracy_json:
        plot_accuracy_vs_size(json.loads(Path(accuracy_json).read_text()), axes[0][1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_accuracy_vs_size(parity_rows: Sequence[dict], ax) -> None:
    """Accuracy against artifact size from verify's JSON rows (sizes read from the sidecars)."""
    from .export.metadata import sidecar_path

    for row in parity_rows:
        if row.get("accuracy") is None or row["status"] == "reference":
            continue
        sidecar = sidecar_path(Path(row["path"]))
        if not sidecar.exists():
            continue
        size = json.loads(sidecar.read_text())["artifact"]["size_bytes"] / 2**20
        ax.scatter(size, 100 * row["accuracy"])
        ax.annotate(row["name"], (size, 100 * row["accuracy"]), fontsize=7)
    ax.set(
        xscale="log",
        xlabel="artifact size (MiB)",
        ylabel="test accuracy (%)",
        title="Accuracy against size",
    )
    ax.grid(True, alpha=0.3)


def plot_history(history_csv: Path, path: Path) -> Path:
    """Training curves from history.csv: loss and accuracy per epoch, train and validation."""
    import csv

    plt = _pyplot()
    rows = list(csv.DictReader(open(history_csv)))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax in (("loss", left), ("accuracy", right)):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [float(r[prefix + key]) for r in rows if r.get(prefix + key)]
            if values:
                ax.plot(epochs[: len(values)], values, style, label=prefix + key)
        ax.set(xlabel="epoch", ylabel=key)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_accuracy_png(parity_rows: Sequence[dict], path: Path) -> Path:
    """Accuracy against artifact size as its own PNG (the report's third plot)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    plot_accuracy_vs_size(parity_rows, ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
