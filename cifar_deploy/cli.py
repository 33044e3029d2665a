"""The ``cifar-deploy`` command line: thin typer commands over the library.

Each command parses options, calls one library function and renders its result. Project errors
become one line on stderr (plus a hint) and the error's exit code; no tracebacks.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__, _tf, console
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, CifarDeployError

app = typer.Typer(
    name="cifar-deploy",
    help="Take CIFAR-10 classifiers from training to deployment: train, export, verify, "
    "benchmark and serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def handles_errors(fn):
    """Turn project errors into one-line messages and their exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CifarDeployError as exc:
            console.error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _version(value: bool):
    if value:
        console.out.print(f"cifar-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show TensorFlow's own log lines and debug output.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
):
    """Train, export, verify, benchmark and serve CIFAR-10 classifiers."""
    _tf.set_verbose(verbose)
    console.setup_logging(verbose)


class Strategy(str, Enum):
    none = "none"
    mirrored = "mirrored"


class Precision(str, Enum):
    off = "off"
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command("models")
@handles_errors
def models_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """List the model registry: name, parameters, input and default recipe."""
    from .training import model_catalog

    rows = model_catalog()
    if json_out:
        return console.print_json(rows)
    console.out.print(
        console.table(
            "Models",
            ["name", "parameters", "input", "default recipe", "description"],
            [(r["name"], f"{r['parameters']:,}", r["input"], r["recipe"], r["description"])
             for r in rows],  # fmt: skip
        )
    )


@app.command("train")
@handles_errors
def train_cmd(
    model: Annotated[str, typer.Argument(help="Model name: cnn, mobilenetv2, wrn-28-10 (any wrn-D-W).")],
    quick: Annotated[bool, typer.Option(help="CNN only: the ~10-minute CPU preset.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of the main phase.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the main phase.")] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="Linear warmup epochs.")] = None,
    final_lr: Annotated[Optional[float], typer.Option(help="Learning rate the cosine ends at.")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing, 0..1.")] = None,
    mixup_alpha: Annotated[Optional[float], typer.Option(help="MixUp Beta(a, a); 0 disables.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 coefficient on kernels.")] = None,
    crop_padding: Annotated[Optional[int], typer.Option(help="Random-crop padding in pixels; 0 disables.")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience in epochs.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="CIFAR-10 directory or archive (else $CIFAR10_DIR, the Keras cache, a download).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs/<model>/ goes.")] = Path("runs"),
    max_train_samples: Annotated[Optional[int], typer.Option(help="Use at most N training images (stratified).")] = None,
    val_split: Annotated[Optional[float], typer.Option(help="Share of training images held out for validation.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for NumPy, TensorFlow and Python.")] = 42,
    weights: Annotated[Optional[str], typer.Option(help="MobileNetV2: imagenet, none, or a weights file.")] = None,
    strategy: Annotated[Strategy, typer.Option(help="mirrored: all GPUs (or logical CPUs).")] = Strategy.none,
    mixed_precision: Annotated[Optional[Precision], typer.Option(help="auto: bf16 on AMX CPUs, fp16 on GPUs.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run record as JSON.")] = False,
):
    """Train a model with its published recipe; writes runs/<model>/best.keras and run files."""
    from .training import resolve_recipe
    from .training.trainer import TrainConfig, train

    recipe = resolve_recipe(
        model, quick=quick, epochs=epochs, batch_size=batch_size, lr=lr,
        warmup_epochs=warmup_epochs, final_lr=final_lr, label_smoothing=label_smoothing,
        mixup_alpha=mixup_alpha, weight_decay=weight_decay, crop_padding=crop_padding, flip=flip,
        early_stopping_patience=patience, val_split=val_split,
        mixed_precision=mixed_precision.value if mixed_precision else None,
    )  # fmt: skip
    config = TrainConfig(
        model=model, recipe=recipe, seed=seed, runs_dir=str(runs_dir), weights=weights,
        data_dir=str(data_dir) if data_dir else None, max_train_samples=max_train_samples,
        strategy=strategy.value, verbose=0 if json_out else (1 if sys.stderr.isatty() else 2),
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress goes to stderr, data to stdout
        result = train(config)
    if json_out:
        return console.print_json(result.info)
    console.out.print(
        console.table(
            f"Trained {result.info['model']}",
            ["test accuracy", "best val accuracy", "epochs", "wall time", "checkpoint"],
            [(f"{result.test_accuracy:.2%}", f"{result.best_val_accuracy:.2%}",
              result.epochs_run, f"{result.wall_seconds:.0f} s", str(result.best_path))],
        )  # fmt: skip
    )


class Format(str, Enum):
    savedmodel = "savedmodel"
    tflite = "tflite"
    onnx = "onnx"
    triton = "triton"
    all = "all"


class Quantize(str, Enum):
    none = "none"
    float16 = "float16"
    dynamic = "dynamic"
    int8 = "int8"


class IOType(str, Enum):
    uint8 = "uint8"
    int8 = "int8"
    float32 = "float32"


@app.command("export")
@handles_errors
def export_cmd(
    format: Annotated[Format, typer.Option("--format", "-f", help="Artifact format; 'all' exports every format and quantization.")],
    model: Annotated[Optional[Path], typer.Option(help="A .keras file (default: the newest runs/*/best.keras).")] = None,
    quantize: Annotated[Optional[Quantize], typer.Option(help="none, float16, dynamic or int8 (TFLite default: int8; others: none).")] = None,
    io_type: Annotated[IOType, typer.Option(help="TFLite int8: input dtype.")] = IOType.uint8,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: exports/<model>/).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="CIFAR-10 for int8 calibration (training images only).")] = None,
    calibration_samples: Annotated[int, typer.Option(help="Calibration images, class-stratified.")] = 500,
    seed: Annotated[int, typer.Option(help="Calibration sample seed.")] = 42,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    max_batch_size: Annotated[int, typer.Option(help="Triton: largest dynamic batch.")] = 64,
    force: Annotated[bool, typer.Option(help="Overwrite existing artifacts.")] = False,
    runs_dir: Annotated[Path, typer.Option(help="Where to look for the newest best.keras.")] = Path("runs"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the artifact records as JSON.")] = False,
):
    """Export a trained model to SavedModel, TFLite, ONNX or a Triton repository.

    Each artifact gets a JSON metadata sidecar. Right after training,
    `cifar-deploy export --format tflite` takes the newest runs/*/best.keras.
    """
    from .export import ExportOptions, export_model, export_targets, find_latest_checkpoint

    options = ExportOptions(
        quantization=quantize.value if quantize else None, io_type=io_type.value,
        calibration_samples=calibration_samples, seed=seed, opset=opset, force=force,
        data_dir=str(data_dir) if data_dir else None, max_batch_size=max_batch_size,
    )  # fmt: skip
    targets = export_targets(format.value, options.quantization)  # bad combinations fail here
    if model is None:
        model = find_latest_checkpoint(runs_dir)
        console.err.print(f"using {model} (newest in {runs_dir}/)")
    with console.progress("exporting", total=len(targets)) as advance:
        artifacts = export_model(
            model, format.value, options, out,
            on_start=lambda f, q: advance(description=f"{f.name} ({q})", step=0),
            on_done=lambda a: advance(step=1),
        )  # fmt: skip
    if json_out:
        console.print_json([a.to_dict() for a in artifacts])
    else:
        console.out.print(console.artifact_table(artifacts))
    if any(a.status != "ok" for a in artifacts):
        raise typer.Exit(EXIT_FAILURE)


class Device(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


@app.command("verify")
@handles_errors
def verify_cmd(
    artifacts: Annotated[Optional[list[Path]], typer.Argument(help="Artifacts or export directories (default: exports/<model>/).")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="Keras model to compare against (default: the sidecars' source).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="CIFAR-10 location (test split used).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Evaluate a stratified sample of N test images (default: all).")] = None,
    device: Annotated[Device, typer.Option(help="cpu or gpu (never a silent CPU fallback).")] = Device.cpu,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for LiteRT/ONNX Runtime (default: all cores).")] = None,
    max_abs_diff: Annotated[Optional[float], typer.Option(help="Override: largest allowed |p - p_ref|.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="Override: least share of identical top-1 (0..1).")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Override: most accuracy points lost.")] = None,
    exports_dir: Annotated[Path, typer.Option(help="Where to look when no artifact is given.")] = Path("exports"),
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the rows as JSON to FILE ('-' for stdout).")] = None,
    markdown_file: Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown table to FILE.")] = None,
):
    """Check every exported artifact against its Keras model on the real test set.

    Exit code 0 when every artifact passes its tolerance, 1 when any fails, 2 for bad input.
    """
    from .render import parity_markdown, parity_table
    from .serving.parity import verify
    from .serving.workspace import default_artifacts

    paths = artifacts or default_artifacts(exports_dir)
    overrides = {"max_abs_diff": max_abs_diff, "min_agreement": min_agreement,
                 "max_accuracy_drop": max_accuracy_drop}  # fmt: skip
    with console.progress("verifying", total=None) as advance:
        rows = verify(paths, reference=reference, data_dir=str(data_dir) if data_dir else None,
                      samples=samples, device=device.value, threads=threads, overrides=overrides,
                      on_progress=lambda name: advance(description=name))  # fmt: skip
    console.write_json_to(json_file, [r.to_dict() for r in rows])
    if markdown_file:
        markdown_file.write_text(parity_markdown(rows))
    if str(json_file) != "-":
        console.out.print(parity_table(rows))
    if any(r.status in ("fail", "error") for r in rows):
        raise typer.Exit(EXIT_FAILURE)


class BenchDevice(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    all = "all"


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        from .errors import InvalidOptionError

        raise InvalidOptionError(f"{what} must be comma-separated integers, received {text!r}")
    return values


@app.command("bench")
@handles_errors
def bench_cmd(
    artifacts: Annotated[Optional[list[Path]], typer.Argument(help="Artifacts or export directories (default: exports/<model>/).")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32,128",
    threads: Annotated[Optional[str], typer.Option(help="Comma-separated CPU thread counts (default: all cores).")] = None,
    device: Annotated[BenchDevice, typer.Option(help="cpu, gpu or all; GPU rows are 'skipped: no GPU' without one.")] = BenchDevice.cpu,
    warmup: Annotated[int, typer.Option(help="Untimed runs per cell.")] = 5,
    min_time: Annotated[float, typer.Option(help="Seconds of timed runs per cell.")] = 1.0,
    min_runs: Annotated[int, typer.Option(help="Timed runs per cell at least.")] = 10,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Keras model.predict and direct-call rows.")] = True,
    reference: Annotated[Optional[Path], typer.Option(help="Keras model for the baseline (default: the sidecars' source).")] = None,
    exports_dir: Annotated[Path, typer.Option(help="Where to look when no artifact is given.")] = Path("exports"),
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write rows and machine info as JSON to FILE ('-' for stdout).")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Write the rows as CSV to FILE.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of latency against batch size.")] = None,
    accuracy: Annotated[Optional[Path], typer.Option(help="A verify --json file: adds an accuracy-against-size panel to --plot.")] = None,
):
    """Measure latency and throughput of every artifact, with Keras as the baseline."""
    from .render import bench_csv, bench_table
    from .serving.bench import BenchConfig, benchmark
    from .serving.workspace import default_artifacts

    config = BenchConfig(
        batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        threads=_int_list(threads, "--threads") if threads else (None,),
        devices=("cpu", "gpu") if device == BenchDevice.all else (device.value,),
        warmup=warmup, min_time=min_time, min_runs=min_runs, baseline=baseline,
    )  # fmt: skip
    config.validate()
    paths = artifacts or default_artifacts(exports_dir)
    with console.progress("benchmarking", total=None) as advance:
        rows, machine = benchmark(paths, config, reference=reference,
                                  on_progress=lambda name: advance(description=name))  # fmt: skip
    console.write_json_to(json_file, {"machine": machine, "rows": [r.to_dict() for r in rows]})
    if csv_file:
        csv_file.write_text(bench_csv(rows))
    if plot:
        from .plots import plot_bench

        plot_bench(rows, plot, accuracy_json=accuracy)
    if str(json_file) != "-":
        console.out.print(bench_table(rows, machine))


@app.command("serve")
@handles_errors
def serve_cmd(
    artifact: Annotated[Path, typer.Argument(help="Any artifact: .keras, .tflite, .onnx, savedmodel/ or triton/.")],
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    name: Annotated[Optional[str], typer.Option(help="Model name in URLs (default: the sidecar's model name).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Largest merged batch.")] = 64,
    max_queue_delay_ms: Annotated[float, typer.Option(help="Longest wait for a batch to fill, ms.")] = 2.0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for LiteRT/ONNX Runtime.")] = None,
    device: Annotated[Device, typer.Option(help="cpu or gpu.")] = Device.cpu,
    max_payload_mb: Annotated[float, typer.Option(help="Largest request body, MB.")] = 8.0,
):
    """Serve an artifact over the Open Inference Protocol (KServe V2) with dynamic batching.

    Endpoints: /v2/health/live, /v2/health/ready, /v2/models/NAME, /v2/models/NAME/ready,
    /v2/models/NAME/infer, /v1/classify (PNG/JPEG upload) and /metrics. Ctrl-C or SIGTERM lets
    in-flight requests finish.
    """
    import uvicorn

    from .serving import load_predictor
    from .serving.server import create_app

    predictor = load_predictor(artifact, device=device.value, threads=threads)
    model_name = name or (predictor.metadata.model_name if predictor.metadata else artifact.stem)
    app_ = create_app(predictor, model_name, max_batch_size, max_queue_delay_ms,
                      int(max_payload_mb * 2**20))  # fmt: skip
    console.err.print(f"serving {artifact} as {model_name!r} ({predictor.provider}) on "
                      f"http://{host}:{port}/v2/models/{model_name}")  # fmt: skip
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


@app.command("predict")
@handles_errors
def predict_cmd(
    artifact: Annotated[Path, typer.Argument(help="Any artifact: .keras, .tflite, .onnx, savedmodel/ or triton/.")],
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files, any size (resized to 32x32 RGB).")],
    top_k: Annotated[int, typer.Option(help="Labels per image.")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for LiteRT/ONNX Runtime.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Classify image files with any artifact; a bad file gets one line, the others still run."""
    from .serving import load_predictor
    from .serving.predict import classify_files

    if not 1 <= top_k <= 10:
        from .errors import InvalidOptionError

        raise InvalidOptionError(f"--top-k must be 1..10, received {top_k}")
    predictor = load_predictor(artifact, threads=threads)
    results = classify_files(predictor, images, top_k)
    for r in results:
        if r["error"]:
            console.error(f"{r['file']}: {r['error']}")
    if json_out:
        console.print_json(results)
    else:
        console.out.print(console.table(
            f"Predictions ({artifact.name})", ["file", "top labels"],
            [(r["file"], ", ".join(f"{p['label']} {p['probability']:.1%}" for p in r["predictions"]))
             for r in results if not r["error"]],
        ))  # fmt: skip
    if any(r["error"] for r in results):
        raise typer.Exit(EXIT_FAILURE)


@app.command("pipeline")
@handles_errors
def pipeline_cmd(
    model: Annotated[str, typer.Argument(help="Model name: cnn, mobilenetv2, wrn-28-10.")],
    quick: Annotated[bool, typer.Option(help="CNN only: the ~10-minute CPU training preset.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of the main training phase.")] = None,
    formats: Annotated[str, typer.Option(help="Comma-separated formats, or 'all'.")] = "all",
    data_dir: Annotated[Optional[Path], typer.Option(help="CIFAR-10 location.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs/<model>/ and the report go.")] = Path("runs"),
    exports_dir: Annotated[Path, typer.Option(help="Where exports/<model>/ goes.")] = Path("exports"),
    max_train_samples: Annotated[Optional[int], typer.Option(help="Train on at most N images.")] = None,
    verify_samples: Annotated[Optional[int], typer.Option(help="Verify on N test images (default: all).")] = None,
    bench_batch_sizes: Annotated[str, typer.Option(help="Benchmark batch sizes.")] = "1,8,32,64",
    bench_min_time: Annotated[float, typer.Option(help="Seconds per benchmark cell.")] = 0.5,
    force: Annotated[bool, typer.Option(help="Redo every stage, even up-to-date ones.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the stage results as JSON.")] = False,
):
    """Train, export, verify, benchmark and write a deployment report, in one command.

    Stages whose outputs are newer than their inputs are skipped (--force redoes them); a failed
    stage stops the ones after it. The report is runs/<model>/report.md (+ .json, .html, plots).
    """
    import dataclasses

    from .pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(
        model=model, quick=quick, epochs=epochs, data_dir=str(data_dir) if data_dir else None,
        formats=tuple(f.strip() for f in formats.split(",") if f.strip()), runs_dir=runs_dir,
        exports_dir=exports_dir, force=force, max_train_samples=max_train_samples,
        verify_samples=verify_samples, bench_min_time=bench_min_time,
        bench_batch_sizes=_int_list(bench_batch_sizes, "--bench-batch-sizes"),
        verbose=0 if json_out else (1 if sys.stderr.isatty() else 2),
    )  # fmt: skip
    colours = {"done": "green", "skipped": "cyan", "failed": "red", "not run": "yellow"}

    def ended(r):
        console.err.print(f"[{colours[r.status]}]{r.name}: {r.status}[/] ({r.seconds:.1f} s) "
                          f"{r.detail}", highlight=False)  # fmt: skip

    with contextlib.redirect_stdout(sys.stderr):
        results = run_pipeline(cfg, on_stage_start=lambda n: console.err.print(f"{n} ..."),
                               on_stage_end=ended)  # fmt: skip
    if json_out:
        console.print_json([dataclasses.asdict(r) for r in results])
    else:
        console.out.print(console.table(f"Pipeline: {model}", ["stage", "status", "seconds", "detail"],
                                        [(r.name, r.status, f"{r.seconds:.1f}", r.detail)
                                         for r in results]))  # fmt: skip
        report = cfg.run_dir / "report.md"
        if report.exists():
            console.out.print(f"report: {report}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FAILURE)


if __name__ == "__main__":  # pragma: no cover
    app()
