"""The deployment report: which artifact to ship, from the run's own files.

Reads ``run.json``, ``history.csv``, ``parity.json`` and ``bench.json`` in ``runs/<model>/`` plus
the artifacts' sidecars, and writes ``report.json``, ``report.md``, ``report.html`` and three
plots (training curves, latency against batch size, accuracy against size).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .export.metadata import sidecar_path
from .render import markdown_table

COLUMNS = [
    "artifact",
    "format",
    "quantization",
    "size",
    "accuracy",
    "diff (pts)",
    "agreement",
    "p50 ms @1",
    "best img/s (batch)",
    "status",
]


def _load(path: Path):
    return json.loads(Path(path).read_text())


def build_report(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    trained = (run_dir / "run.json").exists()  # else a model of the user's own
    run = _load(run_dir / "run.json") if trained else {"model": run_dir.name}
    parity = _load(run_dir / "parity.json")
    bench = _load(run_dir / "bench.json")
    rows = []
    for p in parity:
        if p["status"] == "reference":
            continue
        sidecar = sidecar_path(Path(p["path"]))
        size = _load(sidecar)["artifact"]["size_bytes"] if sidecar.exists() else None
        cells = [
            b
            for b in bench["rows"]
            if b["artifact"] == p["name"] and b["status"] == "ok" and b["runtime"] in ("predictor",)
        ]
        b1 = [b["p50_ms"] for b in cells if b["batch_size"] == 1]
        best = max(cells, key=lambda b: b["throughput"], default=None)
        rows.append(
            {
                "artifact": p["name"],
                "path": p["path"],
                "format": p["format"],
                "quantization": p["quantization"],
                "size_bytes": size,
                "accuracy": p["accuracy"],
                "accuracy_diff": p["accuracy_diff"],
                "agreement": p["agreement"],
                "p50_ms_batch1": min(b1) if b1 else None,
                "best_throughput": best["throughput"] if best else None,
                "best_batch": best["batch_size"] if best else None,
                "status": p["status"],
                "reasons": p["reasons"],
            }
        )
    passing = [r for r in rows if r["status"] == "pass"]
    smallest = min(passing, key=lambda r: r["size_bytes"] or float("inf"), default=None)
    timed = [r for r in passing if r["p50_ms_batch1"] is not None]
    fastest = min(timed, key=lambda r: r["p50_ms_batch1"], default=None)
    reference = next((p for p in parity if p["status"] == "reference"), {})
    return {
        "model": run.get("model"),
        "training": {
            k: run.get(k)
            for k in (
                "test_accuracy",
                "test_accuracy_flip_tta",
                "best_val_accuracy",
                "epochs_run",
                "wall_seconds",
                "precision_policy",
                "data",
                "architecture",
                "recipe_summary",
            )
        },
        "trained_here": trained,
        "reference_path": reference.get("path"),
        "reference_accuracy": reference.get("accuracy"),
        "test_images": reference.get("samples"),
        "artifacts": rows,
        "recommendation": {
            "smallest_passing": smallest and smallest["artifact"],
            "fastest_passing": fastest and fastest["artifact"],
        },
        "machine": bench.get("machine", {}),
    }


def _cells(r: dict) -> list[str]:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    best = f"{r['best_throughput']:,.0f} ({r['best_batch']})" if r["best_throughput"] else "-"
    status = r["status"] + (f": {'; '.join(r['reasons'])}" if r["reasons"] else "")
    size = f"{r['size_bytes'] / 2**20:.2f} MiB" if r["size_bytes"] else "-"
    return [
        r["artifact"],
        r["format"],
        r["quantization"],
        size,
        fmt(r["accuracy"], ".2%"),
        fmt(r["accuracy_diff"], "+.2f"),
        fmt(r["agreement"], ".2%"),
        fmt(r["p50_ms_batch1"], ".3f"),
        best,
        status,
    ]


def _tta_note(training: dict) -> str:
    tta = training.get("test_accuracy_flip_tta")
    return f", {tta:.2%} with flip test-time augmentation" if tta is not None else ""


def _not_trained_here(report: dict) -> str:
    if report.get("trained_here", True):
        return "Training figures unavailable."
    return f"Not trained by cifar-deploy: the model is `{report.get('reference_path')}`."


def _cpu_line(machine: dict) -> str:
    return (
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; "
        f"int8: {machine.get('cpu_int8', '?')}; bf16: {machine.get('cpu_bf16', '?')}"
    )


def _training_text(report: dict) -> str:
    t = report["training"]
    if t.get("test_accuracy") is None:
        return _not_trained_here(report)
    return (
        f"Model `{report['model']}`: {t.get('architecture') or 'architecture not recorded'}. "
        f"Recipe: {t.get('recipe_summary') or 'not recorded'}. "
        f"Test accuracy {t['test_accuracy']:.2%}{_tta_note(t)} (best validation "
        f"{t['best_val_accuracy']:.2%}) "
        f"after {t['epochs_run']} epochs in {t['wall_seconds']:.0f} s, precision "
        f"{t['precision_policy']}, {t['data']['train_images']:,} training images."
    )


def render_markdown(report: dict) -> str:
    m = report["machine"]
    rec = report["recommendation"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    lines = [
        f"# Deployment report: {report['model']}",
        "",
        f"Measured on {_cpu_line(m)}: latencies and int8 results hold for this CPU kind.",
        "",
        f"**Recommendation.** Smallest artifact that passes parity: "
        f"`{rec['smallest_passing'] or 'none'}`. Fastest (batch-1 latency) that passes parity: "
        f"`{rec['fastest_passing'] or 'none'}`.",
        "",
        "## Training",
        "",
        _training_text(report),
        "",
        *(["![training curves](training.png)", ""] if report.get("trained_here", True) else []),
        f"## Artifacts (parity on {report['test_images'] or 0:,} test images, reference "
        f"accuracy {report['reference_accuracy'] or 0:.2%})",
        "",
        markdown_table(COLUMNS, [_cells(r) for r in report["artifacts"]]),
        *[
            f"![{caption}]({name})\n"
            for name, caption in _pictures(report)
            if name != "training.png"
        ],
        "## Machine",
        "",
        f"{_cpu_line(m)}, GPUs: {m.get('gpus') or 'none'}. {versions}",
        "",
    ]
    return "\n".join(lines)


# (file, caption) in the order the report shows them; a file that was not drawn is left out.
PICTURES = (
    ("training.png", "training curves"),
    ("accuracy.png", "accuracy against size, as the difference from the reference"),
    (
        "confusion.png",
        "confusion matrix of the reference and each quantized artifact's disagreements",
    ),
    ("reliability.png", "reliability diagram"),
    ("per_class.png", "per-class accuracy difference"),
    ("latency.png", "latency against batch size"),
)


def _pictures(report: dict) -> list[tuple[str, str]]:
    drawn = set(report.get("pictures", ()))
    return [(name, caption) for name, caption in PICTURES if name in drawn]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(report: dict, run_dir: Path) -> str:
    """One self-contained page (every picture embedded), to attach to a CI run or mail."""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>"
        for r in report["artifacts"]
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rec = report["recommendation"]
    training = html.escape(_training_text(report)).replace("`", "")
    pictures = "".join(
        f"<h2>{html.escape(caption.capitalize())}</h2>"
        f'<p><img alt="{html.escape(caption)}" src="{_data_uri(run_dir / name)}" '
        'style="max-width:100%"></p>'
        for name, caption in _pictures(report)
        if (run_dir / name).exists()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Deployment report: {html.escape(str(report["model"]))}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}.cpu{{color:#555}}</style>
</head><body><h1>Deployment report: {html.escape(str(report["model"]))}</h1>
<p class="cpu">Measured on {html.escape(_cpu_line(report["machine"]))}</p>
<p><b>Smallest passing:</b> {html.escape(str(rec["smallest_passing"]))} &middot;
<b>Fastest passing:</b> {html.escape(str(rec["fastest_passing"]))}</p>
<h2>Training</h2><p>{training}</p>
<h2>Artifacts</h2>
<table><tr>{head}</tr>{rows}</table>
{pictures}
</body></html>
"""


def _draw(run_dir: Path, parity: list[dict]) -> list[str]:
    """The pictures this run's files allow, as PNGs beside the report; returns their names."""
    import numpy as np

    from .plots import plot_accuracy_png, plot_confusion, plot_per_class, plot_reliability

    drawn = []
    plot_accuracy_png(parity, run_dir / "accuracy.png")
    drawn.append("accuracy.png")
    kept_path = run_dir / "predictions.npz"
    if kept_path.exists():
        with np.load(kept_path) as kept_file:
            kept = {k: kept_file[k] for k in kept_file.files}
        rows = [r for r in parity if r["status"] != "reference" and r["name"] in kept]
        quantized = [r["name"] for r in rows if r["quantization"] != "none"]
        names = _class_names(rows, int(np.asarray(kept["reference"]).shape[1]))
        plot_confusion(kept, quantized, names, run_dir / "confusion.png")
        plot_reliability(kept, quantized, run_dir / "reliability.png")
        plot_per_class(kept, quantized, names, run_dir / "per_class.png")
        drawn += ["confusion.png", "reliability.png", "per_class.png"]
    return drawn


def _class_names(rows: list[dict], classes: int) -> list[str]:
    for row in rows:
        sidecar = sidecar_path(Path(row["path"]))
        if sidecar.exists():
            names = json.loads(sidecar.read_text()).get("class_names") or []
            if len(names) == classes:
                return names
    return [f"class_{i}" for i in range(classes)]


def write_report(run_dir: Path) -> dict[str, Path]:
    from .checks.bench import BenchRow
    from .plots import plot_bench, plot_history

    run_dir = Path(run_dir)
    report = build_report(run_dir)
    bench_rows = [BenchRow(**r) for r in _load(run_dir / "bench.json")["rows"]]
    drawn = []
    if (run_dir / "history.csv").exists():
        plot_history(run_dir / "history.csv", run_dir / "training.png")
        drawn.append("training.png")
    plot_bench(bench_rows, run_dir / "latency.png")
    drawn += ["latency.png", *_draw(run_dir, _load(run_dir / "parity.json"))]
    report["pictures"] = drawn
    markdown = render_markdown(report)
    paths = {
        "json": run_dir / "report.json",
        "markdown": run_dir / "report.md",
        "html": run_dir / "report.html",
    }
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown)
    paths["html"].write_text(render_html(report, run_dir))
    return paths
