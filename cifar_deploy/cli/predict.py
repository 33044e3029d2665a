"""``cifar-deploy predict``: image files in, labels out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import console
from ..errors import EXIT_FAILURE, InvalidOptionError
from .common import ArtifactArg, JsonFlag, Opt, Threads, app, handles_errors


@app.command("predict")
@handles_errors
def predict_cmd(
    artifact: ArtifactArg,
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files, any size.")],
    top_k: Annotated[int, Opt(help="Labels per image.")] = 3,
    threads: Threads = None,
    json_out: JsonFlag = False,
):
    """Classify image files with any artifact; a bad file gets one line, the others still run."""
    from ..checks.predict import classify_files
    from ..runtime import load_predictor

    if not 1 <= top_k <= 10:
        raise InvalidOptionError(f"--top-k must be 1..10, received {top_k}")
    predictor = load_predictor(artifact, threads=threads)
    results = classify_files(predictor, images, top_k)
    for r in results:
        if r["error"]:
            console.error(f"{r['file']}: {r['error']}")
    if json_out:
        console.print_json(results)
    else:
        console.out.print(console.predictions_table(artifact.name, results))
    if any(r["error"] for r in results):
        raise typer.Exit(EXIT_FAILURE)
