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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


ACCURACY_TOLERANCE = 1.0  # points: what int8 and dynamic artifacts may lose (verify's tolerance)


def _label_column(ax, points: Sequence[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Labels in one column right of the axes, in the points' vertical order, spaced so that no
    two overlap, each joined to its point by a thin line. Returns the annotations."""
    if not points:
        return []
    fig = ax.figure
    height = ax.get_window_extent().height or 1.0  # pixels
    gap = fontsize * 1.5 * fig.dpi / 72 / height  # one label's height, in axes fractions
    to_axes = ax.transAxes.inverted()
    wanted = []
    for x, y, label in points:
        _, fy = to_axes.transform(ax.transData.transform((x, y)))
        wanted.append((fy, x, y, label))
    wanted.sort()
    placed: list[float] = []
    for fy, *_ in wanted:
        placed.append(max(fy, placed[-1] + gap) if placed else fy)
    overflow = placed[-1] - 1.0
    if overflow > 0:  # shift the column down, then keep the spacing from the bottom up
        placed = [p - overflow for p in placed]
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    notes = []
    for (_, x, y, label), ty in zip(wanted, placed):
        notes.append(
            ax.annotate(
                label,
                xy=(x, y),
                xycoords="data",
                xytext=(1.03, ty),
                textcoords="axes fraction",
                fontsize=fontsize,
                va="center",
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"},
                annotation_clip=False,
            )
        )
    return notes


def plot_accuracy_vs_size(parity_rows: Sequence[dict], ax) -> list:
    """Accuracy difference from the reference (points) against artifact size, from verify's
    JSON rows (sizes read from the sidecars), with the int8 tolerance band; labels in a column
    beside the axes, never overlapping. Returns the label annotations."""
    from .export.metadata import sidecar_path

    points = []
    for row in parity_rows:
        if row.get("accuracy_diff") is None or row["status"] == "reference":
            continue
        sidecar = sidecar_path(Path(row["path"]))
        if not sidecar.exists():
            continue
        size = json.loads(sidecar.read_text())["artifact"]["size_bytes"] / 2**20
        label = row["name"] if row["runtime"] in ("", None) else f"{row['name']} ({row['runtime']})"
        points.append((size, row["accuracy_diff"], label, row["status"]))
    for size, diff, _, status in points:
        ax.scatter(size, diff, color="tab:red" if status != "pass" else "tab:blue", zorder=3)
    diffs = [p[1] for p in points] or [0.0]
    low = min(min(diffs), -ACCURACY_TOLERANCE) - 0.5
    high = max(max(diffs), 0.0) + 0.5
    ax.axhspan(low, -ACCURACY_TOLERANCE, color="tab:red", alpha=0.08, lw=0)
    ax.axhline(-ACCURACY_TOLERANCE, color="tab:red", lw=0.8, ls="--")
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.text(
        0.01, -ACCURACY_TOLERANCE, " int8/dynamic tolerance: at most 1 point lost",
        transform=ax.get_yaxis_transform(), fontsize=7, va="bottom", color="tab:red",
    )  # fmt: skip
    ax.set(
        xscale="log",
        ylim=(low, high),
        xlabel="artifact size (MiB)",
        ylabel="accuracy - reference accuracy (points)",
        title="Accuracy against size",
    )
    ax.grid(True, alpha=0.3)
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 2, 5, 10 MiB, not 2x10^0
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    return _label_column(ax, [(p[0], p[1], p[2]) for p in points])


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


def accuracy_figure(parity_rows: Sequence[dict]):
    """(figure, label annotations) of accuracy against size, laid out and drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    fig.subplots_adjust(left=0.08, right=0.62, bottom=0.12, top=0.92)
    labels = plot_accuracy_vs_size(parity_rows, ax)
    fig.canvas.draw()
    return fig, labels


def plot_accuracy_png(parity_rows: Sequence[dict], path: Path) -> Path:
    """Accuracy against artifact size as its own PNG (the report's accuracy plot)."""
    plt = _pyplot()
    fig, _ = accuracy_figure(parity_rows)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _confusion(truth, predicted, classes: int):
    import numpy as np

    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def _matrix_panel(ax, matrix, names: Sequence[str], title: str, xlabel: str, ylabel: str) -> None:
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(names))
    small = len(names) <= 12
    ax.set_xticks(list(ticks), list(names) if small else [], rotation=90, fontsize=7)
    ax.set_yticks(list(ticks), list(names) if small else [], fontsize=7)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if small:
        peak = matrix.max() or 1
        for (i, j), count in _nonzero(matrix):
            colour = "white" if count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6, color=colour)


def _nonzero(matrix):
    import numpy as np

    return [((int(i), int(j)), int(matrix[i, j])) for i, j in zip(*np.nonzero(matrix))]


def plot_confusion(kept: dict, quantized: Sequence[str], names: Sequence[str], path: Path) -> Path:
    """The reference's confusion matrix (true class against predicted), then one panel per
    quantized artifact counting only the images where it disagrees with the reference (the
    reference's class against the artifact's)."""
    import numpy as np

    plt = _pyplot()
    labels, ref = kept["labels"], np.asarray(kept["reference"]).argmax(1)
    panels = 1 + len(quantized)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.4 * rows), squeeze=False)
    accuracy = float((ref == labels).mean())
    _matrix_panel(
        axes[0][0],
        _confusion(labels, ref, len(names)),
        names,
        f"reference ({accuracy:.2%})",
        "predicted",
        "true class",
    )
    for k, name in enumerate(quantized, start=1):
        ax = axes[k // cols][k % cols]
        theirs = np.asarray(kept[name]).argmax(1)
        differ = theirs != ref
        _matrix_panel(
            ax,
            _confusion(ref[differ], theirs[differ], len(names)),
            names,
            f"{name}: {int(differ.sum())} disagreements",
            "artifact's class",
            "reference's class",
        )
    for k in range(panels, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_reliability(kept: dict, names: Sequence[str], path: Path, bins: int = 15) -> Path:
    """Reliability diagram: accuracy against confidence in equal-width bins, for the reference
    and each artifact in ``names``, with each one's expected calibration error; below, how many
    images fall in each bin."""
    import numpy as np

    from .checks.verify import expected_calibration_error

    plt = _pyplot()
    labels = kept["labels"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=0.8, label="perfect calibration")
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for name in ["reference", *names]:
        probs = np.asarray(kept[name], dtype=np.float32)
        confidence, correct = probs.max(1), probs.argmax(1) == labels
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        hits = np.bincount(which, weights=correct, minlength=bins)
        shown = counts > 0
        ece = expected_calibration_error(probs, labels, bins)
        style = {"lw": 2.0, "color": "black"} if name == "reference" else {"lw": 1.0}
        top.plot(
            centres[shown], hits[shown] / counts[shown], marker="o", ms=3,
            label=f"{name} (ECE {ece:.3f})", **style,
        )  # fmt: skip
        if name == "reference":
            bottom.bar(centres, counts, width=1 / bins * 0.9, color="0.6")
    top.set(ylabel="accuracy", title="Reliability diagram", xlim=(0, 1), ylim=(0, 1))
    top.grid(True, alpha=0.3)
    top.legend(fontsize=7, loc="upper left")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images (reference)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_per_class(kept: dict, quantized: Sequence[str], names: Sequence[str], path: Path) -> Path:
    """Per-class accuracy of each quantized artifact minus the reference's, in points."""
    import numpy as np

    from .checks.verify import per_class_accuracy

    plt = _pyplot()
    labels = kept["labels"]
    ref = per_class_accuracy(np.asarray(kept["reference"]).argmax(1), labels, len(names))
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(names) * max(len(quantized), 1)), 4))
    width = 0.8 / max(len(quantized), 1)
    x = np.arange(len(names))
    for k, name in enumerate(quantized):
        ours = per_class_accuracy(np.asarray(kept[name]).argmax(1), labels, len(names))
        ax.bar(x + k * width - 0.4 + width / 2, 100 * (ours - ref), width, label=name)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, list(names) if len(names) <= 20 else [], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="accuracy - reference (points)", title="Per-class accuracy difference")
    ax.grid(True, axis="y", alpha=0.3)
    if quantized:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
