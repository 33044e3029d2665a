"""``cifar-deploy bench``: latency and throughput beside Keras."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import EXIT_FAILURE
from ..runtime.predictors import DEVICES
from .common import (
    AddSoftmax,
    ArtifactsArg,
    ExportsDir,
    JsonFlag,
    JsonOut,
    MeanOpt,
    Opt,
    PreprocessOpt,
    StdOpt,
    WideFlag,
    _int_list,
    app,
    choices,
    declaration,
    finite,
    handles_errors,
    output_file,
)

BenchDevice = choices("BenchDevice", [*DEVICES, "all"])


@app.command("bench")
@handles_errors
def bench_cmd(
    artifacts: ArtifactsArg = None,
    batch_sizes: Annotated[str, Opt(help="Comma-separated batch sizes.")] = "1,8,32,128",
    threads: Annotated[Optional[str], Opt(help="Comma-separated CPU thread counts.")] = None,
    device: Annotated[
        BenchDevice, Opt(help="cpu, gpu or all; GPU rows say 'skipped: no GPU' without one.")
    ] = BenchDevice.cpu,
    warmup: Annotated[int, Opt(help="Untimed runs per cell.", min=0)] = 5,
    min_time: Annotated[
        float, Opt(help="Seconds of timed runs per cell.", min=0, max=3600, callback=finite)
    ] = 1.0,
    min_runs: Annotated[int, Opt(help="Timed runs per cell at least.", min=1)] = 10,
    baseline: Annotated[
        bool, Opt("--baseline/--no-baseline", help="Keras model.predict and direct-call rows.")
    ] = True,
    reference: Annotated[
        Optional[Path], Opt(help="Keras model for the baseline (default: the sidecars' source).")
    ] = None,
    exports_dir: ExportsDir = Path("exports"),
    json_out: JsonFlag = False,
    json_file: JsonOut = None,
    wide: WideFlag = False,
    csv_file: Annotated[
        Optional[Path], Opt("--csv", help="Write the rows as CSV to FILE.", callback=output_file)
    ] = None,
    plot: Annotated[
        Optional[Path], Opt(help="Write a PNG of latency against batch size.", callback=output_file)
    ] = None,
    accuracy: Annotated[
        Optional[Path], Opt(help="A verify --json-out file: adds accuracy against size to --plot.")
    ] = None,
    preprocess: PreprocessOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    add_softmax: AddSoftmax = False,
):
    """Measure latency and throughput of every artifact, with Keras as the baseline.

    A Keras model runs with the preprocessing and softmax its artifacts' sidecars declare, or
    the ones given here (--preprocess, --mean, --std, --add-softmax) when no sidecar says.
    """
    from ..checks.bench import BenchConfig, benchmark
    from ..render import bench_csv, bench_table
    from ..runtime.artifacts import default_artifacts

    config = BenchConfig(
        batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        threads=_int_list(threads, "--threads") if threads else (None,),
        devices=("cpu", "gpu") if device == BenchDevice.all else (device.value,),
        warmup=warmup,
        min_time=min_time,
        min_runs=min_runs,
        baseline=baseline,
    )
    config.validate()
    paths = artifacts or default_artifacts(exports_dir)
    with console.progress("benchmarking", total=None, lines=True) as advance:
        rows, machine = benchmark(
            paths,
            config,
            reference=reference,
            on_progress=lambda name: advance(description=name),
            declared=declaration(preprocess, mean, std, add_softmax),
        )
    record = {"machine": machine, "rows": [r.to_dict() for r in rows]}
    console.emit(
        json_out, json_file, record, lambda: bench_table(rows, machine, wide), compact=not wide
    )
    if csv_file:
        csv_file.write_text(bench_csv(rows))
    if plot:
        from ..plots import plot_bench

        plot_bench(rows, plot, accuracy_json=accuracy)
    if rows and all(r.status == "failed" for r in rows):
        console.error(f"every one of the {len(rows)} benchmark cells failed")
        raise typer.Exit(EXIT_FAILURE)
