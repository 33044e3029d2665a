"""``cifar-deploy export``: artifacts from one format table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import EXIT_FAILURE
from .common import (
    TTA,
    AddSoftmax,
    DataDir,
    Format,
    IOType,
    JsonFlag,
    LabelsOpt,
    MeanOpt,
    Opt,
    PreprocessOpt,
    Quantize,
    RunsDir,
    StdOpt,
    app,
    declared_preprocess,
    handles_errors,
    output_dir,
)


@app.command("export")
@handles_errors
def export_cmd(
    format: Annotated[
        Format, Opt("--format", "-f", help="Artifact format; 'all': every format and quantization.")
    ],
    model: Annotated[
        Optional[Path], Opt(help="A .keras file (default: the newest runs/*/best.keras).")
    ] = None,
    quantize: Annotated[
        Optional[Quantize], Opt(help="TFLite default: int8; other formats: none.")
    ] = None,
    io_type: Annotated[
        Optional[IOType], Opt(help="TFLite int8 input dtype [default: uint8].")
    ] = None,
    out: Annotated[
        Optional[Path],
        Opt(help="Output directory (default: exports/<model>/).", callback=output_dir),
    ] = None,
    data_dir: DataDir = None,
    calibration_samples: Annotated[
        Optional[int], Opt(help="int8: calibration training images [default: 500].", min=1)
    ] = None,
    seed: Annotated[int, Opt(help="Calibration sample seed.", min=0, max=2**32 - 1)] = 42,
    opset: Annotated[Optional[int], Opt(help="ONNX opset [default: 18].")] = None,
    max_batch_size: Annotated[
        Optional[int], Opt(help="Triton: largest batch [default: 64].")
    ] = None,
    static_batch: Annotated[
        Optional[int], Opt(help="TFLite: a fixed batch size, for Edge TPU and NPU compilers.")
    ] = None,
    tta: Annotated[
        Optional[TTA], Opt(help="flip: bake mirror test-time augmentation into the graph.")
    ] = None,
    preprocess: PreprocessOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    add_softmax: AddSoftmax = False,
    labels: LabelsOpt = None,
    force: Annotated[bool, Opt(help="Overwrite existing artifacts.")] = False,
    runs_dir: RunsDir = Path("runs"),
    json_out: JsonFlag = False,
):
    """Export a trained model to SavedModel, TFLite, ONNX or a Triton repository.

    Each artifact gets a JSON metadata sidecar. Right after training,
    `cifar-deploy export --format tflite` takes the newest runs/*/best.keras. Options are checked
    against every target before anything is converted.

    A model of your own (.keras, or .h5 from tf_keras) keeps its input size and class count;
    declare the scaling it was trained with (--preprocess, --mean, --std) and a logits head
    (--add-softmax): both go into every artifact, which then takes raw pixels 0..255. With
    images at hand (--data-dir: CIFAR-10, CIFAR-100, or a folder per class), a declaration
    that real images show is wrong is refused before anything is written.
    """
    from ..data import read_labels
    from ..export import ExportOptions, export_model, export_targets, find_latest_checkpoint

    options = ExportOptions(
        quantization=quantize.value if quantize else None,
        io_type=io_type.value if io_type else None,
        calibration_samples=calibration_samples,
        seed=seed,
        opset=opset,
        force=force,
        data_dir=data_dir,
        max_batch_size=max_batch_size,
        static_batch=static_batch,
        tta=tta.value if tta else None,
        preprocess=declared_preprocess(preprocess, mean, std),
        add_softmax=add_softmax,
        class_names=read_labels(labels) if labels is not None else None,
    )
    targets = export_targets(format.value, options.quantization)  # bad combinations fail here
    if model is None:
        model = find_latest_checkpoint(runs_dir)
        console.err.print(f"using {model} (newest in {runs_dir}/)")
    with console.progress("exporting", total=len(targets)) as advance:
        artifacts = export_model(
            model,
            targets,
            options,
            out,
            on_start=lambda f, q: advance(description=f"{f.name} ({q})", step=0),
            on_done=lambda a: advance(step=1),
        )
    if len(artifacts) == 1 and artifacts[0].exception is not None:
        raise artifacts[0].exception  # one target: its error is the command's error
    if json_out:
        console.print_json([a.to_dict() for a in artifacts])
    else:
        console.out.print(console.artifact_table(artifacts))
    if any(a.status != "ok" for a in artifacts):
        raise typer.Exit(EXIT_FAILURE)
