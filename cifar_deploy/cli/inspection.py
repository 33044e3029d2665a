"""``cifar-deploy inspect``: what to check before shipping a .tflite."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import console
from ..errors import InvalidOptionError
from .common import JsonFlag, Opt, app, handles_errors


@app.command("inspect")
@handles_errors
def inspect_cmd(
    artifact: Annotated[Path, typer.Argument(help="A .tflite model.")],
    threads: Annotated[int, Opt(help="CPU threads for the latency figures.")] = 1,
    latency: Annotated[bool, Opt("--latency/--no-latency", help="Time batch-1 runs.")] = True,
    json_out: JsonFlag = False,
):
    """What to check before shipping a .tflite: tensors, operators, embedded metadata, which
    consumers can load it, memory, XNNPACK delegation and native latency."""
    from ..checks.inspection import inspect_tflite

    if threads < 1:
        raise InvalidOptionError(f"--threads must be at least 1, received {threads}")
    result = inspect_tflite(artifact, threads=threads, latency=latency)
    if json_out:
        return console.print_json(result.to_dict())
    for part in console.inspection_tables(result):
        console.out.print(part)
