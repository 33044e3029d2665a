"""All terminal output goes through here: data to stdout, diagnostics to stderr.

Library functions return data; the CLI renders it with these helpers (rich tables for people,
JSON for machines) and reports errors as one line plus an optional hint.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)  # stdout: results
err = Console(stderr=True, soft_wrap=True)  # stderr: progress, warnings, errors


def print_json(data) -> None:
    """Machine output: JSON on stdout, nothing else on that stream."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    if hint:
        err.print(f"[dim]hint:[/] {hint}", highlight=False)


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
