"""The ``cifar-deploy`` command line: thin typer commands over the library.

Each command parses options, calls one library function and renders its result. Project errors
become one line on stderr (plus a hint) and the error's exit code; no tracebacks. ``--json``
always means the same thing: print the result as JSON on stdout instead of a table; commands that
also write files take ``--json-out FILE``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__, _tf, console
from .contract import MODE_MEANING, PREPROCESS_MODES
from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    CifarDeployError,
    InvalidModelError,
    InvalidOptionError,
)
from .serving.limits import ServerLimits

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

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
def root(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Show TensorFlow's own log lines and debug output."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
):
    """Train, export, verify, benchmark and serve CIFAR-10 classifiers."""
    _tf.set_verbose(verbose)
    console.setup_logging(verbose)


def finite(value: float | None) -> float | None:
    """Option callback: NaN and infinity pass typer's ranges (every comparison with NaN is
    false), so float options also run through this."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, received {value}")
    return value


def output_file(value: Path | None) -> Path | None:
    """Option callback for a file the command writes at the end: checked before the work
    starts (its directory exists and is writable, the path is not a directory)."""
    import os

    if value is None:
        return None
    parent = value.parent  # Path("x").parent is Path(".")
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory; expected a file path")
    if not parent.is_dir():
        raise typer.BadParameter(f"the directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (value.exists() and not os.access(value, os.W_OK)):
        raise typer.BadParameter(f"{value} is not writable")
    return value


def output_dir(value: Path | None) -> Path | None:
    """Option callback for a directory the command creates or fills: not a file, and inside
    a writable directory."""
    import os

    if value is None:
        return None
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file; expected a directory")
    existing = value
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise typer.BadParameter(f"{existing} is not a writable directory")
    return value


# Options several commands share, spelled once.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]
DataDir = Annotated[
    Optional[Path],
    typer.Option(
        help="CIFAR-10 directory or archive, CIFAR-100 directory, or a folder of images per "
        "class (else $CIFAR10_DIR, the Keras cache, a download)."
    ),
]
RunsDir = Annotated[Path, typer.Option(help="Where runs/<model>/ lives.", callback=output_dir)]
ExportsDir = Annotated[Path, typer.Option(help="Where exports/<model>/ lives.")]
Threads = Annotated[
    Optional[int],
    typer.Option(help="CPU threads for LiteRT/ONNX Runtime (default: all cores).", min=1),
]
ArtifactArg = Annotated[
    Path, typer.Argument(help="Any artifact: .keras, .tflite, .onnx, savedmodel/ or triton/.")
]
ArtifactsArg = Annotated[
    Optional[list[Path]],
    typer.Argument(help="Artifacts or export directories (default: the newest exports/<model>/)."),
]
JsonOut = Annotated[
    Optional[Path],
    typer.Option("--json-out", help="Also write the JSON to FILE.", callback=output_file),
]

# What a model of the user's own was trained with: export and pipeline bake it into every
# artifact; verify and bench apply it to a Keras model that no sidecar describes.
PreprocessMode = Enum("PreprocessMode", {m: m for m in PREPROCESS_MODES}, type=str)
PreprocessOpt = Annotated[
    Optional[PreprocessMode],
    typer.Option(
        help="The input scaling the model was trained with: "
        + "; ".join(f"{m}: {t}" for m, t in MODE_MEANING.items())
        + " [default: raw, or what the sidecars say]."
    ),
]
MeanOpt = Annotated[
    Optional[str], typer.Option(help="Per-channel mean R,G,B subtracted after --preprocess.")
]
StdOpt = Annotated[
    Optional[str], typer.Option(help="Per-channel std R,G,B divided by after --preprocess.")
]
LabelsOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Class names, one per line in output order (default: the data set's).",
        exists=True,
        dir_okay=False,
    ),
]
AddSoftmax = Annotated[bool, typer.Option(help="The model outputs logits: end it in a softmax.")]


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise InvalidOptionError(f"{what} must be comma-separated integers, received {text!r}")
    return values


def _training_verbosity(json_out: bool) -> int:
    """Keras' fit verbosity: silent for --json, a bar on a terminal, a line per epoch in logs."""
    return 0 if json_out else (1 if sys.stderr.isatty() else 2)


@app.command("models")
@handles_errors
def models_cmd(json_out: JsonFlag = False):
    """List the model registry: name, parameters, input and default recipe."""
    from .training import model_catalog

    rows = model_catalog()
    if json_out:
        return console.print_json(rows)
    columns = ["name", "parameters", "input", "default recipe", "description"]
    cells = [
        (r["name"], f"{r['parameters']:,}", r["input"], r["recipe"], r["description"]) for r in rows
    ]
    console.out.print(console.table("Models", columns, cells))


class Strategy(str, Enum):
    none = "none"
    mirrored = "mirrored"
    multi_worker = "multi-worker"


class Precision(str, Enum):
    off = "off"
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"


Opt = typer.Option  # the training options are many; this keeps each on one line


@app.command("train")
@handles_errors
def train_cmd(
    model: Annotated[str, typer.Argument(help="cnn, mobilenetv2, wrn-28-10 (any wrn-D-W).")],
    quick: Annotated[
        bool, Opt(help="CNN only: a 10-minute budget on any machine (with --epochs: N epochs).")
    ] = False,
    epochs: Annotated[Optional[int], Opt(help="Epochs of the main phase.", min=1)] = None,
    time_budget: Annotated[
        Optional[str], Opt(help="Train for this wall time (90s, 8m, 1h30m) instead of epochs.")
    ] = None,
    batch_size: Annotated[Optional[int], Opt(help="Images per step.", min=1)] = None,
    lr: Annotated[
        Optional[float], Opt(help="Peak learning rate of the main phase.", callback=finite)
    ] = None,
    warmup_epochs: Annotated[
        Optional[float], Opt(help="Linear warmup epochs.", min=0, callback=finite)
    ] = None,
    final_lr: Annotated[
        Optional[float], Opt(help="Learning rate the cosine ends at.", min=0, callback=finite)
    ] = None,
    label_smoothing: Annotated[
        Optional[float], Opt(help="Label smoothing, 0..1.", min=0, max=1, callback=finite)
    ] = None,
    mixup_alpha: Annotated[
        Optional[float], Opt(help="MixUp Beta(a, a); 0 disables.", min=0, callback=finite)
    ] = None,
    weight_decay: Annotated[
        Optional[float], Opt(help="L2 coefficient on kernels.", min=0, callback=finite)
    ] = None,
    crop_padding: Annotated[
        Optional[int], Opt(help="Random-crop padding, pixels; 0: none.", min=0)
    ] = None,
    flip: Annotated[
        Optional[bool], Opt("--flip/--no-flip", help="Random horizontal flips.")
    ] = None,
    patience: Annotated[
        Optional[int], Opt(help="Early-stopping patience in epochs.", min=1)
    ] = None,
    data_dir: DataDir = None,
    runs_dir: RunsDir = Path("runs"),
    max_train_samples: Annotated[
        Optional[int], Opt(help="Train on at most N images.", min=1)
    ] = None,
    val_split: Annotated[
        Optional[float], Opt(help="Share held out for validation.", callback=finite)
    ] = None,
    seed: Annotated[
        int, Opt(help="Seed for NumPy, TensorFlow and Python.", min=0, max=2**32 - 1)
    ] = 42,
    weights: Annotated[Optional[str], Opt(help="MobileNetV2: imagenet, none or a file.")] = None,
    strategy: Annotated[
        Strategy, Opt(help="mirrored: all GPUs (or CPUs); multi-worker: the machines in TF_CONFIG.")
    ] = Strategy.none,
    mixed_precision: Annotated[
        Optional[Precision], Opt(help="auto: bf16 on AMX/AVX512-BF16 CPUs, fp16 on GPUs.")
    ] = None,
    json_out: JsonFlag = False,
):
    """Train a model with its published recipe; writes runs/<model>/best.keras and run files."""
    from .training import resolve_recipe, resolve_time_budget
    from .training.budget import parse_duration
    from .training.trainer import TrainConfig, train

    budget = resolve_time_budget(
        model, quick, epochs, parse_duration(time_budget) if time_budget else None
    )
    recipe = resolve_recipe(
        model,
        quick=quick,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_epochs=warmup_epochs,
        final_lr=final_lr,
        label_smoothing=label_smoothing,
        mixup_alpha=mixup_alpha,
        weight_decay=weight_decay,
        crop_padding=crop_padding,
        flip=flip,
        early_stopping_patience=patience,
        val_split=val_split,
        mixed_precision=mixed_precision.value if mixed_precision else None,
    )
    config = TrainConfig(
        model=model,
        recipe=recipe,
        seed=seed,
        runs_dir=runs_dir,
        weights=weights,
        data_dir=data_dir,
        max_train_samples=max_train_samples,
        strategy=strategy.value,
        time_budget=budget,
        verbose=_training_verbosity(json_out),
    )
    with _budget_bar(config) as _, contextlib.redirect_stdout(sys.stderr):  # Keras: stderr
        result = train(config)
    if json_out:
        return console.print_json(result.info)
    console.out.print(console.train_table(result))


@contextlib.contextmanager
def _budget_bar(config):
    """With a time budget, the trainer reports to a bar of elapsed and remaining time (Keras'
    epoch bar counts epochs the budget decides); without one, Keras' bar is the progress."""
    if config.time_budget is None:
        yield None
        return
    with console.progress("training", total=config.time_budget, lines=True, timed=True) as bar:
        config.on_progress = console.budget_reporter(bar)
        yield bar


class TTA(str, Enum):
    none = "none"
    flip = "flip"


def declared_preprocess(mode, mean: str | None, std: str | None):
    """The ``--preprocess``/``--mean``/``--std`` declaration (None: nothing declared)."""
    from .contract import Preprocess, parse_channels

    if mode is None:
        if mean is not None or std is not None:
            raise InvalidOptionError(
                "--mean and --std apply after a --preprocess mode; received them without one",
                hint="name the mode the model's scaling starts with, e.g. --preprocess unit",
            )
        return None
    return Preprocess(mode.value, parse_channels(mean, "--mean"), parse_channels(std, "--std"))


def declaration(mode, mean: str | None, std: str | None, add_softmax: bool):
    """What verify and bench were told of a Keras model (None: nothing, the sidecars say)."""
    from .contract import Declaration

    preprocess = declared_preprocess(mode, mean, std)
    if preprocess is None and not add_softmax:
        return None
    return Declaration(preprocess, add_softmax)


class Format(str, Enum):
    savedmodel = "savedmodel"
    tflite = "tflite"
    onnx = "onnx"
    triton = "triton"
    triton_python = "triton-python"
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
    from .data import read_labels
    from .export import ExportOptions, export_model, export_targets, find_latest_checkpoint

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


class Device(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


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
    from .checks.verify import verify
    from .render import parity_markdown, parity_table
    from .runtime.artifacts import default_artifacts

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
    console.emit(json_out, json_file, [r.to_dict() for r in rows], lambda: parity_table(rows))
    if markdown_file:
        markdown_file.write_text(parity_markdown(rows))
    if any(r.status in ("fail", "error") for r in rows):
        raise typer.Exit(EXIT_FAILURE)


class BenchDevice(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    all = "all"


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
    from .checks.bench import BenchConfig, benchmark
    from .render import bench_csv, bench_table
    from .runtime.artifacts import default_artifacts

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
    console.emit(json_out, json_file, record, lambda: bench_table(rows, machine))
    if csv_file:
        csv_file.write_text(bench_csv(rows))
    if plot:
        from .plots import plot_bench

        plot_bench(rows, plot, accuracy_json=accuracy)
    if rows and all(r.status == "failed" for r in rows):
        console.error(f"every one of the {len(rows)} benchmark cells failed")
        raise typer.Exit(EXIT_FAILURE)


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
    from .checks.inspection import inspect_tflite

    if threads < 1:
        raise InvalidOptionError(f"--threads must be at least 1, received {threads}")
    result = inspect_tflite(artifact, threads=threads, latency=latency)
    if json_out:
        return console.print_json(result.to_dict())
    for part in console.inspection_tables(result):
        console.out.print(part)


@app.command("serve")
@handles_errors
def serve_cmd(
    artifact: Annotated[
        Path,
        typer.Argument(
            help="An artifact (.tflite, .onnx, .keras, savedmodel/, triton/) or a directory of "
            "exports (exports/cnn/, exports/)."
        ),
    ],
    host: Annotated[str, Opt(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.", min=0, max=65535)] = 8000,
    name: Annotated[
        Optional[str], Opt(help="Model name in URLs (default: the sidecar's model name).")
    ] = None,
    max_batch_size: Annotated[int, Opt(help="Largest merged batch.", min=1, max=4096)] = 64,
    max_queue_delay_ms: Annotated[
        float, Opt(help="Longest wait for a batch to fill, ms.", min=0, max=10_000, callback=finite)
    ] = 2.0,
    threads: Threads = None,
    device: Annotated[Device, Opt(help="cpu or gpu.")] = Device.cpu,
    max_payload_mb: Annotated[
        float, Opt(help="Largest request body, MB.", min=0.01, max=4096, callback=finite)
    ] = 8.0,
    grpc_port: Annotated[
        Optional[int],
        Opt(
            help="Also serve the Open Inference Protocol over gRPC on this port (off by default).",
            min=0,
            max=65535,
        ),
    ] = None,
    max_connections: Annotated[
        int, Opt(help="Open HTTP connections at once; the next gets 503.", min=1)
    ] = ServerLimits.max_connections,
    header_timeout_s: Annotated[
        float,
        Opt(help="Seconds a connection may take to send a request head.", min=0.1, callback=finite),
    ] = ServerLimits.header_timeout_s,
    body_timeout_s: Annotated[
        float,
        Opt(
            help="Seconds a request may take to send its body (then 408).", min=0.1, callback=finite
        ),
    ] = ServerLimits.body_timeout_s,
    max_queue: Annotated[
        int,
        Opt(help="Requests waiting per model; beyond it 503 (gRPC: UNAVAILABLE) at once.", min=1),
    ] = ServerLimits.max_queue,
    grpc_max_connections: Annotated[
        int, Opt(help="Open gRPC connections at once (clients multiplex calls on a few).", min=1)
    ] = ServerLimits.grpc_max_connections,
    fast_path: Annotated[
        bool,
        Opt(
            "--fast-path/--no-fast-path",
            help="Answer plain HTTP/1.1 inference requests from the protocol, without the ASGI "
            "cycle (see README); off: every request takes the ASGI path.",
        ),
    ] = True,
    workers: Annotated[
        int,
        Opt(
            help="Server processes sharing the ports (SO_REUSEPORT), each with its own copy of "
            "the models; --threads is per worker (default: the cores shared out).",
            min=1,
            max=64,
        ),
    ] = 1,
):
    """Serve an artifact, or a directory of them, over the Open Inference Protocol (KServe V2)
    with dynamic batching.

    ARTIFACT is one artifact (served as its model's name, or --name), or a directory: exports/cnn/
    serves every artifact its sidecars name, exports/ every model's, each as its own model (named
    after its file: cnn_int8.tflite, cnn_savedmodel) with its own batcher; one that cannot be
    loaded is reported and skipped. Endpoints: /v2/health/live, /v2/health/ready, POST
    /v2/repository/index, /v2/models/NAME (and NAME/versions/1), each with /ready, /config and
    /infer; /v1/classify (PNG/JPEG upload; ?model=NAME when several are served) and /metrics.
    Ctrl-C or SIGTERM lets in-flight requests finish. Connections that send nothing are closed
    after --header-timeout-s, bodies must arrive within --body-timeout-s, at most
    --max-connections HTTP and --grpc-max-connections gRPC connections are open at once (both
    within the open-file limit), and each model queues at most --max-queue requests (see
    README, "Limits").

    --workers N runs N server processes on the same ports, each with its own event loop and
    batchers: the kernel spreads connections over them and a connection stays with one. It pays
    under many concurrent connections; a lone request runs on one worker's share of the cores.
    /metrics sums every worker's values.
    """
    from .runtime.predictors import default_threads
    from .serving.launch import ServeOptions, serve_here
    from .serving.limits import fit_to_open_files

    if host not in LOOPBACK_HOSTS:
        console.warn(
            f"--host {host} listens beyond this machine: anyone who can reach it can use the "
            "model (there is no authentication); put a proxy with TLS and auth in front"
        )
    limits, lowered = fit_to_open_files(
        ServerLimits(
            header_timeout_s,
            body_timeout_s,
            max_connections,
            max_queue=max_queue,
            grpc_max_connections=grpc_max_connections,
        ),
        grpc=grpc_port is not None,
    )
    if lowered:
        console.warn(lowered)
    options = ServeOptions(
        artifact,
        name,
        host,
        port,
        grpc_port,
        max_batch_size,
        max_queue_delay_ms,
        threads if threads is not None or workers == 1 else max(1, default_threads() // workers),
        device.value,
        int(max_payload_mb * 2**20),
        limits,
        _tf.is_verbose(),
        fast_path,
    )
    if workers == 1:
        serve_here(options, _announce)
        return
    from .serving.workers import serve_workers

    serve_workers(options, workers, lambda started: _announce(started, workers))


def _announce(started, workers: int = 1) -> None:
    """What a started server prints: skipped artifacts, then what it serves, and where."""
    for bad, why in started.skipped:
        console.err.print(f"[yellow]skipped {bad}:[/] {why}", highlight=False)
    for line in started.lines:
        console.err.print(line, highlight=False)
    if workers > 1:
        console.err.print(f"{workers} worker processes, each serving every model", highlight=False)


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
    from .checks.predict import classify_files
    from .runtime import load_predictor

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
            help="cnn, mobilenetv2 or wrn-28-10 to train one of ours; or a .keras/.h5 file of "
            "your own, which skips training."
        ),
    ],
    quick: Annotated[
        bool,
        Opt(help="CNN only: every stage within 15 minutes on any machine (see README)."),
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

    from .data import read_labels
    from .pipeline import PipelineConfig, run_pipeline
    from .training.budget import parse_duration

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


def _unwrap_help_paragraphs() -> None:
    """Each paragraph of every command's docstring on one line, so that ``--help`` wraps it to
    the terminal's width (typer keeps a docstring's own line breaks after its first paragraph,
    which in an 80-column terminal leaves ragged half-lines)."""
    for info in app.registered_commands:
        if info.help is None and info.callback.__doc__:
            paragraphs = inspect.cleandoc(info.callback.__doc__).split("\n\n")
            info.help = "\n\n".join(" ".join(p.splitlines()) for p in paragraphs)


_unwrap_help_paragraphs()


# ---------------------------------------------------------------------------------------------
# The entry point, with the deprecated spellings it still accepts

_JSON_FILE_COMMANDS = ("verify", "bench")  # where --json FILE meant "write JSON to FILE"


def legacy_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Rewrite ``verify/bench --json FILE`` (before 0.2: a file path) to ``--json-out FILE``
    (or ``--json`` for ``-``, which meant stdout); returns (arguments, deprecation notes)."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command not in _JSON_FILE_COMMANDS:
        return args, []
    out, notes, i = [], [], 0
    while i < len(args):
        arg = args[i]
        value = None
        if arg.startswith("--json="):
            value = arg.split("=", 1)[1]
        elif (
            arg == "--json"
            and i + 1 < len(args)
            and (args[i + 1] == "-" or args[i + 1].endswith(".json"))
        ):
            value, i = args[i + 1], i + 1
        if value is None:
            out.append(arg)
        elif value == "-":
            out.append("--json")
            notes.append("--json - is deprecated: --json alone prints JSON on stdout")
        else:
            out += ["--json-out", value]
            notes.append(f"--json FILE is deprecated: use --json-out {value}")
        i += 1
    return out, notes


def main() -> None:
    """The ``cifar-deploy`` console script."""
    from . import interrupts

    # typer's usage error (it ships its own click); found by name, not by private import path
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    interrupts.install()  # SIGTERM stops work as Ctrl-C does: cleanups run, exit 130
    args, notes = legacy_args(sys.argv[1:])
    for note in notes:
        console.err.print(f"[yellow]warning:[/] {note}", highlight=False)
    try:
        code = app(args=args, prog_name="cifar-deploy", standalone_mode=False)
    except usage_error as exc:  # a bad option value: one line, as every other error
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "cifar-deploy"
        console.error(exc.format_message(), f"{where} --help lists the options")
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
