"""``cifar-deploy pipeline``: every stage to a deployment report."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import EXIT_FAILURE, InvalidModelError, InvalidOptionError
from .common import (
    AddSoftmax,
    DataDir,
    ExportsDir,
    JsonFlag,
    LabelsOpt,
    MeanOpt,
    Opt,
    PreprocessOpt,
    RunsDir,
    StdOpt,
    _int_list,
    _training_verbosity,
    app,
    declared_preprocess,
    finite,
    handles_errors,
)


def _model_file(name: str) -> Path | None:
    """The user's model file that ``pipeline``'s argument names; None: one of our models."""
    path = Path(name)
    if path.suffix.lower() in (".keras", ".h5") or path.is_file():
        if not path.is_file():
            raise InvalidModelError(
                f"no model file at {path}",
                hint="name a .keras or .h5 file, or one of ours: cnn, mobilenetv2, wrn-28-10",
            )
        return path
    return None


@app.command("pipeline")
@handles_errors
def pipeline_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="airbench, cnn, mobilenetv2 or wrn-28-10 to train one of ours; or a .keras/.h5 "
            "file of your own, which skips training."
        ),
    ],
    quick: Annotated[
        bool,
        Opt(
            help="airbench or cnn: every stage within 15 minutes on any machine; airbench "
            "reaches 70% on the slowest CPU kind (see docs/benchmarks.md)."
        ),
    ] = False,
    epochs: Annotated[Optional[int], Opt(help="Epochs of the main training phase.", min=1)] = None,
    time_budget: Annotated[
        Optional[str], Opt(help="Train for this wall time (90s, 8m, 1h30m) instead of epochs.")
    ] = None,
    formats: Annotated[str, Opt(help="Comma-separated formats, or 'all'.")] = "all",
    data_dir: DataDir = None,
    runs_dir: RunsDir = Path("runs"),
    exports_dir: ExportsDir = Path("exports"),
    max_train_samples: Annotated[
        Optional[int], Opt(help="Train on at most N images.", min=1)
    ] = None,
    verify_samples: Annotated[Optional[int], Opt(help="Verify on N test images.", min=1)] = None,
    bench_batch_sizes: Annotated[str, Opt(help="Benchmark batch sizes.")] = "1,8,32,64",
    bench_min_time: Annotated[
        float, Opt(help="Seconds per benchmark cell.", min=0, max=3600, callback=finite)
    ] = 0.5,
    preprocess: PreprocessOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    add_softmax: AddSoftmax = False,
    labels: LabelsOpt = None,
    force: Annotated[bool, Opt(help="Redo every stage, even up-to-date ones.")] = False,
    json_out: JsonFlag = False,
):
    """Train, export, verify, benchmark and write a deployment report, in one command.

    Stages whose outputs are newer than their inputs are skipped (--force redoes them); a failed
    stage stops the ones after it. The report is runs/<model>/report.md (+ .json, .html, plots).

    With a model file of your own (cifar-deploy pipeline my_model.keras --preprocess unit ...),
    training is skipped and runs/ and exports/ take the file's name; --preprocess, --mean,
    --std, --add-softmax and --labels declare it as export does.
    """
    import dataclasses

    from ..data import read_labels
    from ..pipeline import PipelineConfig, run_pipeline
    from ..training.budget import parse_duration

    source = _model_file(model)
    declared = declared_preprocess(preprocess, mean, std)
    if source is not None:
        training = {
            "--quick": quick,
            "--epochs": epochs is not None,
            "--time-budget": time_budget is not None,
            "--max-train-samples": max_train_samples is not None,
        }
        given = [flag for flag, on in training.items() if on]
        if given:
            raise InvalidOptionError(
                f"{', '.join(given)} set how our models train; received with your model file "
                f"{source}, which is not trained",
                hint="drop them, or name one of our models (cnn, mobilenetv2, wrn-28-10)",
            )
    elif declared is not None or add_softmax or labels is not None:
        raise InvalidOptionError(
            f"--preprocess, --mean, --std, --add-softmax and --labels describe a model file of "
            f"your own; received them with {model!r}, one of ours (raw pixels in, probabilities "
            "out)",
            hint="name your .keras or .h5 file instead of a model name",
        )
    cfg = PipelineConfig(
        model=source.stem if source is not None else model,
        source=source,
        preprocess=declared,
        add_softmax=add_softmax,
        class_names=read_labels(labels) if labels is not None else None,
        quick=quick,
        epochs=epochs,
        time_budget=parse_duration(time_budget) if time_budget else None,
        data_dir=data_dir,
        formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
        runs_dir=runs_dir,
        exports_dir=exports_dir,
        force=force,
        max_train_samples=max_train_samples,
        verify_samples=verify_samples,
        bench_min_time=bench_min_time,
        bench_batch_sizes=_int_list(bench_batch_sizes, "--bench-batch-sizes"),
        verbose=_training_verbosity(json_out),
        progress=lambda title, **kw: console.progress(title, lines=True, **kw),
    )

    def stage_starts(name: str) -> None:
        if name == "train" and cfg.plan is not None:
            console.err.print(f"plan: {cfg.plan.describe()}", highlight=False)
        console.err.print(f"{name} ...")

    with contextlib.redirect_stdout(sys.stderr):
        results = run_pipeline(cfg, on_stage_start=stage_starts, on_stage_end=console.print_stage)
    if json_out:
        console.print_json([dataclasses.asdict(r) for r in results])
    else:
        console.out.print(console.stages_table(cfg.model, results, cfg.budget))
        report = cfg.run_dir / "report.md"
        if report.exists():
            console.out.print(f"report: {report}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FAILURE)
