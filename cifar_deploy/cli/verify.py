"""``cifar-deploy verify``: every artifact against its Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import EXIT_FAILURE
from .common import (
    TTA,
    AddSoftmax,
    ArtifactsArg,
    DataDir,
    Device,
    ExportsDir,
    JsonFlag,
    JsonOut,
    MeanOpt,
    Opt,
    PreprocessOpt,
    StdOpt,
    Threads,
    WideFlag,
    app,
    declaration,
    finite,
    handles_errors,
    output_file,
)


@app.command("verify")
@handles_errors
def verify_cmd(
    artifacts: ArtifactsArg = None,
    reference: Annotated[
        Optional[Path], Opt(help="Keras model to compare with (default: the sidecars' source).")
    ] = None,
    data_dir: DataDir = None,
    samples: Annotated[
        Optional[int], Opt(help="A stratified sample of N test images.", min=1)
    ] = None,
    device: Annotated[Device, Opt(help="cpu or gpu (never a silent CPU fallback).")] = Device.cpu,
    threads: Threads = None,
    max_abs_diff: Annotated[
        Optional[float], Opt(help="Override: largest |p - p_ref|.", min=0, max=1, callback=finite)
    ] = None,
    min_agreement: Annotated[
        Optional[float],
        Opt(help="Override: least top-1 agreement, 0..1.", min=0, max=1, callback=finite),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float],
        Opt(help="Override: most points lost, 0..100.", min=0, max=100, callback=finite),
    ] = None,
    exports_dir: ExportsDir = Path("exports"),
    json_out: JsonFlag = False,
    json_file: JsonOut = None,
    wide: WideFlag = False,
    markdown_file: Annotated[
        Optional[Path], Opt("--markdown", help="Write a Markdown table.", callback=output_file)
    ] = None,
    consumer: Annotated[
        Optional[list[str]],
        Opt(help="Also run each .tflite in a library apps embed (mediapipe) against LiteRT."),
    ] = None,
    tta: Annotated[TTA, Opt(help="flip: also report accuracy with mirror TTA.")] = TTA.none,
    preprocess: PreprocessOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    add_softmax: AddSoftmax = False,
):
    """Check every exported artifact against its Keras model on the real test set.

    Exit code 0 when every artifact passes its tolerance, 1 when any fails, 2 for bad input.

    The Keras model answers raw pixels as its artifacts do: with the preprocessing and softmax
    their sidecars declare. For artifacts without sidecars, declare them here (--preprocess,
    --mean, --std, --add-softmax); a declaration that contradicts the sidecars is refused.
    """
    from ..checks.verify import verify
    from ..render import parity_markdown, parity_table
    from ..runtime.artifacts import default_artifacts

    paths = artifacts or default_artifacts(exports_dir)
    overrides = {
        "max_abs_diff": max_abs_diff,
        "min_agreement": min_agreement,
        "max_accuracy_drop": max_accuracy_drop,
    }
    with console.progress("verifying", total=None, lines=True) as advance:
        report = console.pass_reporter(advance)
        rows = verify(
            paths,
            reference=reference,
            data_dir=data_dir,
            samples=samples,
            device=device.value,
            threads=threads,
            overrides=overrides,
            on_progress=report,
            consumers=consumer or (),
            tta=tta.value,
            declared=declaration(preprocess, mean, std, add_softmax),
        )
    console.emit(json_out, json_file, [r.to_dict() for r in rows], lambda: parity_table(rows, wide))
    if markdown_file:
        markdown_file.write_text(parity_markdown(rows))
    if any(r.status in ("fail", "error") for r in rows):
        raise typer.Exit(EXIT_FAILURE)
