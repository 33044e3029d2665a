"""All terminal output goes through here: data to stdout, diagnostics to stderr.

Library functions return data; the CLI renders it with these helpers (rich tables for people,
JSON for machines) and reports errors as one line plus an optional hint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Piped or redirected output gets 200 columns instead of rich's default 80, so wide tables
# (bench, verify) stay one row per line in logs and files.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(soft_wrap=True, width=_WIDTH)  # stdout: results
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def print_json(data) -> None:
    """Machine output: JSON on stdout, nothing else on that stream."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


COMPACT_WIDTH = 80  # what a compact table fits, on a terminal or in a pipe


def emit(
    json_flag: bool,
    json_file: Path | None,
    data,
    render: Callable[[], Table],
    compact: bool = False,
) -> None:
    """A command's result: JSON on stdout for ``--json``, else the table ``render`` makes (a
    ``compact`` one within 80 columns, folding what does not fit); and the JSON written to
    ``--json-out FILE`` as well when one is given."""
    if json_file is not None:
        Path(json_file).write_text(json.dumps(data, indent=2, default=str) + "\n")
    if json_flag:
        print_json(data)
    else:
        if compact:
            out.print(render(), width=min(out.width, COMPACT_WIDTH), soft_wrap=False)
        else:
            out.print(render())


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    caption: str | None = None,
) -> Table:
    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    if hint:
        err.print(f"[dim]hint:[/] {hint}", highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


class _RichStderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        style = {"warning": "yellow", "error": "red"}.get(level, "dim")
        err.print(f"[{style}]{level}:[/] {record.getMessage()}", highlight=False)


def setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("cifar_deploy")
    logger.handlers[:] = [_RichStderrHandler()]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _eta(elapsed: float, done: float, total: float | None) -> str:
    """ ", about 40 s left" once some of ``total`` is done; "" before."""
    if not total or done <= 0 or done >= total:
        return ""
    return f", about {elapsed / done * (total - done):.0f} s left"


def budget_reporter(advance):
    """A trainer's ``on_progress(description, elapsed, budget)`` drawn on a ``timed`` bar."""
    return lambda description, elapsed, budget: advance(
        description=description, completed=elapsed, total=budget
    )


def pass_reporter(advance):
    """verify's ``on_progress(name, done, total)`` drawn on a bar."""
    return lambda name, done, total: advance(description=name, completed=done, total=total)


@contextlib.contextmanager
def progress(title: str, total: int | None, lines: bool = False, timed: bool = False):
    """A progress bar on stderr, with elapsed and remaining time; yields ``advance(description=
    None, step=1, completed=None, total=None)`` (``completed``/``total`` set the position and
    the size outright). With ``lines``, where stderr is no terminal (logs, pipes, CI), each new
    description is a line instead, with the time so far and the time left, so long work never
    goes silent there. ``timed``: the bar counts seconds of a time budget (``total``)."""
    bar = Progress(
        TextColumn(f"[bold]{title}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # no live display in logs and pipes
    )
    started = time.perf_counter()
    with bar:
        task = bar.add_task("", total=total)

        def advance(description=None, step=1, completed=None, total=None) -> None:
            fields = {"description": description} if description else {}
            if total is not None:
                fields["total"] = total
            if completed is not None:
                bar.update(task, completed=completed, **fields)
            else:
                bar.update(task, advance=step, **fields)
            if lines and description and bar.disable:
                state = bar.tasks[0]
                elapsed = time.perf_counter() - started
                if timed and state.total:
                    when = f"{state.completed:.0f} s of a {state.total:.0f} s budget"
                else:
                    count = f"{state.completed:g} of {state.total:g} done, " if state.total else ""
                    when = f"{count}{elapsed:.0f} s{_eta(elapsed, state.completed, state.total)}"
                err.print(f"{title}: {description} ({when})", highlight=False)

        yield advance


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def artifact_table(artifacts) -> Table:
    rows = []
    for a in artifacts:
        status = "[green]ok[/]" if a.status == "ok" else f"[red]failed[/]: {a.error}"
        rows.append(
            (
                a.format,
                a.quantization,
                a.path.name if a.path else "-",
                human_size(a.size_bytes) if a.size_bytes else "-",
                f"{a.seconds:.1f}",
                status,
            )
        )
    folders = sorted({str(a.path.parent) for a in artifacts if a.path})
    title = f"Exports in {', '.join(folders)}" if folders else "Exports"
    return table(title, ["format", "quantization", "file", "size", "seconds", "status"], rows)


def train_table(result) -> Table:
    cells = (
        f"{result.test_accuracy:.2%}",
        f"{result.info['test_accuracy_flip_tta']:.2%}",
        f"{result.best_val_accuracy:.2%}",
        result.epochs_run,
        f"{result.wall_seconds:.0f} s",
        str(result.best_path),
    )
    columns = [
        "test accuracy",
        "with flip TTA",
        "best val accuracy",
        "epochs",
        "wall time",
        "checkpoint",
    ]
    return table(f"Trained {result.info['model']}", columns, [cells])


def predictions_table(artifact_name: str, results: Sequence[dict]) -> Table:
    rows = [
        (r["file"], ", ".join(f"{p['label']} {p['probability']:.1%}" for p in r["predictions"]))
        for r in results
        if not r["error"]
    ]
    return table(f"Predictions ({artifact_name})", ["file", "top labels"], rows)


STAGE_COLOURS = {"done": "green", "skipped": "cyan", "failed": "red", "not run": "yellow"}


def print_stage(result) -> None:
    """One pipeline stage's end, on stderr."""
    colour = STAGE_COLOURS[result.status]
    err.print(
        f"[{colour}]{result.name}: {result.status}[/] ({result.seconds:.1f} s) {result.detail}",
        highlight=False,
    )


def stages_table(model: str, results, budget: float | None = None) -> Table:
    rows = [(r.name, r.status, f"{r.seconds:.1f}", r.detail) for r in results]
    total = sum(r.seconds for r in results)
    within = f"of a {budget:.0f} s budget" if budget else ""
    rows.append(("total", "", f"{total:.1f}", within))
    return table(f"Pipeline: {model}", ["stage", "status", "seconds", "detail"], rows)


def inspection_tables(result) -> list[Table]:
    """``inspect``'s record as a few small tables, in the order a reviewer reads them."""
    tensors = [
        (kind, t.name, str(t.shape_signature), t.dtype, _quant(t.scale, t.zero_point))
        for kind, group in (("input", result.inputs), ("output", result.outputs))
        for t in group
    ]
    delegation = (
        "not delegated: " + ", ".join(result.not_delegated)
        if result.not_delegated
        else "fully delegated"
    )
    facts = [
        ("size", f"{human_size(result.size_bytes)} ({result.size_bytes:,} bytes)"),
        ("dynamic batch", "yes" if result.dynamic_batch else "no"),
        ("activations (batch 1)", f"{human_size(result.activation_bytes)} (arena upper bound)"),
        ("float operators", ", ".join(result.float_ops) or "none"),
        ("XNNPACK", delegation),
        ("embedded metadata", _metadata_line(result.metadata)),
        ("GPU delegate", result.gpu_delegate),
    ]
    facts += [
        (f"batch-1 p50, {name}", "-" if ms is None else f"{ms:.3f} ms ({result.threads} threads)")
        for name, ms in result.latency_ms.items()
    ]
    if result.latency_ms:
        facts.append(("measured on", result.cpu))
    return [
        table(f"Inspect {result.path}", ["", "value"], facts),
        table("Tensors", ["", "name", "shape", "dtype", "quantization"], tensors),
        table("Operators", ["operator (output dtype)", "count"], sorted(result.ops.items())),
        table("Consumers", ["consumer", "can load it"], list(result.consumers.items())),
    ]


def _quant(scale, zero_point) -> str:
    return "-" if scale is None else f"scale {scale:.6g}, zero point {zero_point}"


def _metadata_line(meta: dict | None) -> str:
    if meta is None:
        return "none"
    labels = ", ".join(meta["labels"][:3]) + (", ..." if len(meta["labels"]) > 3 else "")
    return (
        f"{meta['name']} {meta['version']}; {meta['color_space']} {meta['image_size']}; "
        f"normalization mean {meta['normalization_mean']} std {meta['normalization_std']}; "
        f"{len(meta['labels'])} labels ({labels}) in {meta['label_file']}"
    )
