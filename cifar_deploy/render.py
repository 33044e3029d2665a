"""Rendering of library records: rich tables for people, Markdown for reports.

Library functions return dataclass records; this module turns them into text, so the CLI and the
report share one rendering of each kind of record.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from rich.table import Table

from .console import table
from .cpu import cpu_info

PARITY_COLUMNS = [
    "artifact",
    "format",
    "quant",
    "runtime",
    "accuracy",
    "flip TTA",
    "diff (pts)",
    "agreement",
    "max abs diff",
    "mean abs diff",
    "worst class (pts)",
    "ECE",
    "seconds",
    "status",
]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def parity_cells(row) -> list[str]:
    status = row.status if not row.reasons else f"{row.status}: {'; '.join(row.reasons)}"
    return [
        row.name,
        row.format,
        row.quantization,
        row.runtime,
        _fmt(row.accuracy, ".2%"),
        _fmt(row.accuracy_tta, ".2%"),
        _fmt(row.accuracy_diff, "+.2f"),
        _fmt(row.agreement, ".2%"),
        _fmt(row.max_abs_diff, ".1e"),
        _fmt(row.mean_abs_diff, ".1e"),
        _fmt(row.worst_class_diff, "+.1f"),
        _fmt(row.ece, ".3f"),
        _fmt(row.seconds, ".1f"),
        status,
    ]


# The default in a pipe or an 80-column terminal: one line per artifact; --wide shows all.
PARITY_COMPACT = ["artifact", "accuracy", "diff (pts)", "agreement", "max abs diff", "status"]
COMPACT_HEADERS = {"diff (pts)": "diff", "agreement": "agree", "max abs diff": "max diff"}
_COLOURS = {"pass": "green", "fail": "red", "error": "red", "reference": "cyan", "ok": "green"}


def _pick(columns: Sequence[str], cells: Sequence[str], keep: Sequence[str]) -> list[str]:
    return [cells[columns.index(c)] for c in keep]


def _reasons_caption(items: Sequence[tuple[str, str]]) -> str | None:
    """Why rows failed, one line each under a compact table (its status cell says only
    pass/fail/error)."""
    return "\n".join(f"{name}: {why}" for name, why in items if why) or None


def parity_table(rows: Sequence, wide: bool = False) -> Table:
    samples = rows[0].samples if rows else 0
    cpu = cpu_info()
    title = (
        f"Parity on {samples:,} test images, {cpu.model}, {cpu.cores} cores\n"
        f"int8: {cpu.int8}; bf16: {cpu.bf16}"
    )
    columns = PARITY_COLUMNS if wide else [COMPACT_HEADERS.get(c, c) for c in PARITY_COMPACT]
    caption = None if wide else _reasons_caption([(r.name, "; ".join(r.reasons)) for r in rows])
    t = table(title, columns, [], caption=caption)
    for row in rows:
        cells = parity_cells(row)
        if not wide:
            cells = _pick(PARITY_COLUMNS, cells, PARITY_COMPACT)
            cells[-1] = row.status
        cells[-1] = f"[{_COLOURS.get(row.status, 'white')}]{cells[-1]}[/]"
        t.add_row(*cells)
    return t


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def esc(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def parity_markdown(rows: Sequence) -> str:
    samples = rows[0].samples if rows else 0
    return f"Parity on {samples:,} test images; {cpu_info().label()}\n\n" + markdown_table(
        PARITY_COLUMNS, [parity_cells(r) for r in rows]
    )


BENCH_COLUMNS = [
    "artifact",
    "quant",
    "runtime",
    "device",
    "batch",
    "threads",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "img/s",
    "x predict",
    "load ms",
    "RSS+ MB",
    "status",
]


def bench_cells(r) -> list[str]:
    status = r.status if not r.reason else f"{r.status}: {r.reason}"
    return [
        r.artifact,
        r.quantization,
        f"{r.runtime} ({r.provider})" if r.provider else r.runtime,
        r.device,
        str(r.batch_size),
        str(r.threads or "all"),
        _fmt(r.p50_ms, ".3f"),
        _fmt(r.p90_ms, ".3f"),
        _fmt(r.p99_ms, ".3f"),
        _fmt(r.throughput, ",.0f"),
        _fmt(r.speedup_vs_predict, ".1f"),
        _fmt(r.load_ms, ".0f"),
        _fmt(r.peak_rss_added_mb, ".0f"),
        status,
    ]


BENCH_COMPACT = ["artifact", "runtime", "batch", "p50 ms", "p99 ms", "img/s", "status"]


def bench_table(rows: Sequence, machine: dict, wide: bool = False) -> Table:
    title = (
        f"Latency on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores\n"
        f"int8: {machine.get('cpu_int8', '?')}; bf16: {machine.get('cpu_bf16', '?')}"
    )
    if wide:
        return table(title, BENCH_COLUMNS, [bench_cells(r) for r in rows])
    caption = _reasons_caption([(f"{r.artifact} ({r.runtime})", r.reason) for r in rows])
    compact = []
    for r in rows:
        cells = _pick(BENCH_COLUMNS, bench_cells(r), BENCH_COMPACT)
        cells[1], cells[-1] = r.runtime, r.status
        compact.append(cells)
    return table(title, BENCH_COMPACT, compact, caption=caption)


def bench_markdown(rows: Sequence) -> str:
    return markdown_table(BENCH_COLUMNS, [bench_cells(r) for r in rows])


def bench_csv(rows: Sequence) -> str:
    buffer = io.StringIO()
    dicts = [r.to_dict() for r in rows]
    fields = list(dicts[0]) if dicts else []
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(dicts)
    return buffer.getvalue()
