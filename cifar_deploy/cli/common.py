"""Shared parts of the command line: the typer app, error handling, option types and the
choices generated from the registries and the export format table."""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__, _tf, console
from ..contract import MODE_MEANING, PREPROCESS_MODES
from ..errors import EXIT_INTERRUPTED, CifarDeployError, InvalidOptionError
from ..export.base import IO_TYPES, export_formats
from ..runtime.predictors import DEVICES
from ..training.recipes import MIXED_PRECISION
from ..training.trainer import STRATEGIES
from ..tta import TTA_MODES

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


app = typer.Typer(
    name="cifar-deploy",
    help="Take CIFAR-10 classifiers from training to deployment: train, export, verify, "
    "benchmark and serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: no <bool> metavars, readable at 80 columns
    context_settings={"max_content_width": 120},  # the terminal's width, up to 120 columns
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


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


WideFlag = Annotated[
    bool, typer.Option("--wide", help="Every column (the default table fits 80 columns).")
]


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


Opt = typer.Option  # the training options are many; this keeps each on one line


def choices(name: str, values) -> type[Enum]:
    """A typer choice type whose members are ``values``, as a registry or table lists them (so
    a new format, quantization or strategy reaches the CLI without restating it here)."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


Strategy = choices("Strategy", STRATEGIES)
Precision = choices("Precision", MIXED_PRECISION)
TTA = choices("TTA", TTA_MODES)
Device = choices("Device", DEVICES)
Format = choices("Format", [f.name for f in export_formats()] + ["all"])
Quantize = choices("Quantize", dict.fromkeys(q for f in export_formats() for q in f.quantizations))
IOType = choices("IOType", IO_TYPES)


def declared_preprocess(mode, mean: str | None, std: str | None):
    """The ``--preprocess``/``--mean``/``--std`` declaration (None: nothing declared)."""
    from ..contract import Preprocess, parse_channels

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
    from ..contract import Declaration

    preprocess = declared_preprocess(mode, mean, std)
    if preprocess is None and not add_softmax:
        return None
    return Declaration(preprocess, add_softmax)
