"""The ``cifar-deploy`` command line: thin typer commands over the library.

Each command parses options, calls one library function and renders its result. Project errors
become one line on stderr (plus a hint) and the error's exit code; no tracebacks. ``--json``
always means the same thing: print the result as JSON on stdout instead of a table; commands that
also write files take ``--json-out FILE``.

One module per verb (``cli/train.py`` is ``cifar-deploy train``); ``common.py`` holds the
app, the shared option types and the choices generated from the registries."""

from __future__ import annotations

import inspect
import sys

import typer

from .. import console
from ..errors import EXIT_INTERRUPTED
from .common import app

# Importing a verb's module registers its command, in this order in --help.
# isort: off
from . import models, train, export, verify, bench, inspection, serve, predict, pipeline  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def _unwrap_help_paragraphs() -> None:
    """Each paragraph of every command's docstring on one line, so that ``--help`` wraps it to
    the terminal's width (typer keeps a docstring's own line breaks after its first paragraph,
    which in an 80-column terminal leaves ragged half-lines)."""
    for info in app.registered_commands:
        if info.help is None and info.callback.__doc__:
            paragraphs = inspect.cleandoc(info.callback.__doc__).split("\n\n")
            info.help = "\n\n".join(" ".join(p.splitlines()) for p in paragraphs)


def main() -> None:
    """The ``cifar-deploy`` console script."""
    from .. import interrupts

    # typer's usage error (it ships its own click); found by name, not by private import path
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    interrupts.install()  # SIGTERM stops work as Ctrl-C does: cleanups run, exit 130
    try:
        code = app(args=sys.argv[1:], prog_name="cifar-deploy", standalone_mode=False)
    except usage_error as exc:  # a bad option value: one line, as every other error
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "cifar-deploy"
        console.error(exc.format_message(), f"{where} --help lists the options")
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


_unwrap_help_paragraphs()
