"""The one metadata record that travels with every artifact.

A JSON sidecar at ``<artifact>.json`` (and embedded where the format allows: ONNX
``metadata_props``) says what the artifact expects and how it was made. Runtimes and the server
read input dtype, quantization and preprocessing from it; nothing re-derives them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..contract import (
    CLASS_NAMES,
    INPUT_NAME,
    OUTPUT_NAME,
    PREPROCESS_MODES,
    PREPROCESSING,
    Preprocess,
    Signature,
    default_class_names,
    preprocessing_text,
)
from ..errors import DataFormatError, InvalidModelError, one_line

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".json"


@dataclass
class TensorSpec:
    name: str
    shape: list[int | None]  # None: dynamic (the batch dimension)
    dtype: str  # numpy dtype name: float32, uint8, int8
    scale: float | None = None  # quantized tensors: real = scale * (q - zero_point)
    zero_point: int | None = None


@dataclass
class FileRecord:
    path: str
    sha256: str
    size_bytes: int


@dataclass
class Metadata:
    model_name: str
    format: str
    quantization: str
    input: TensorSpec
    output: TensorSpec
    artifact: FileRecord
    source: FileRecord | None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    preprocessing: str = PREPROCESSING
    calibration: dict | None = None  # {"samples": N, "seed": S, "split": "train"}
    export_seconds: float = 0.0
    versions: dict = field(default_factory=dict)
    created_at: str = ""
    extra: dict = field(default_factory=dict)
    tta: str = "none"  # "flip": the graph averages the image's and its mirror's probabilities
    # What the source model itself expects, baked into the graph before it (--preprocess, --mean,
    # --std): verify applies the same to the Keras reference. Raw for our own models.
    source_preprocess: dict = field(default_factory=lambda: Preprocess().to_dict())
    added_softmax: bool = False  # --add-softmax: the graph ends in a softmax the model lacks
    schema_version: int = SCHEMA_VERSION
    # False for a record built from the file alone (a .keras model, or an artifact without a
    # sidecar): then the file's own tensors, not this record, say what the input takes.
    from_sidecar: bool = field(default=True, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["from_sidecar"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Metadata:
        """The record of a parsed sidecar, validated field by field first (see
        :func:`sidecar_problem`); raises ``ValueError`` naming the first bad field."""
        problem = sidecar_problem(data)
        if problem:
            raise ValueError(problem)
        data = dict(data)
        data["input"] = TensorSpec(**data["input"])
        data["output"] = TensorSpec(**data["output"])
        data["artifact"] = FileRecord(**data["artifact"])
        data["source"] = FileRecord(**data["source"]) if data.get("source") else None
        data.pop("from_sidecar", None)
        return cls(**data)

    @property
    def signature(self) -> Signature:
        """The artifact's input size and class count, from its tensors."""
        return Signature.of_tensors(self.input.shape, self.output.shape)

    @property
    def declared_preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.source_preprocess)

    def adopt(self, signature: Signature) -> None:
        """For a record built from a file alone: take the tensors' sizes the file itself has
        (and default names for its class count, unless the count already matches)."""
        self.input = float_input(signature)
        self.output = prob_output(self.output.dtype, signature)
        if len(self.class_names) != signature.classes:
            self.class_names = default_class_names(signature.classes)
        self.preprocessing = preprocessing_text(signature)

    @classmethod
    def bare(cls, path: Path, kind: str) -> Metadata:
        """The record of a file without a sidecar: the contract's tensors and labels, the file's
        own hash and size, no source model (runtimes :meth:`adopt` the file's own sizes)."""
        path = Path(path)
        return cls(
            model_name=path.stem,
            format=kind,
            quantization="none",
            input=float_input(),
            output=prob_output(),
            artifact=file_record(path),
            source=None,
            from_sidecar=False,
        )


# The format table's names and quantizations, spelled here so that reading a sidecar does not
# import every converter module (the table imports onnx); a test keeps them equal to the table.
SIDECAR_FORMATS = ("savedmodel", "tflite", "onnx", "triton", "triton-python")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TENSOR_DTYPES = ("float32", "float16", "uint8", "int8")


def _is_int(v) -> bool:
    return type(v) is int


def _is_number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _tensor_problem(t) -> str | None:
    if not isinstance(t, dict) or set(t) - {"name", "shape", "dtype", "scale", "zero_point"}:
        return "an object with name, shape, dtype, scale and zero_point"
    if not isinstance(t.get("name"), str):
        return "a string 'name'"
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(d is None or _is_int(d) for d in shape):
        return "a 'shape' list of integers or null"
    if t.get("dtype") not in TENSOR_DTYPES:
        return f"a 'dtype' of {', '.join(TENSOR_DTYPES)}"
    if t.get("scale") is not None and not (_is_number(t["scale"]) and t["scale"] > 0):
        return "a positive number or null 'scale'"
    if t.get("zero_point") is not None and not _is_int(t["zero_point"]):
        return "an integer or null 'zero_point'"
    return None


def _file_problem(f) -> str | None:
    if not isinstance(f, dict) or set(f) != {"path", "sha256", "size_bytes"}:
        return "an object with path, sha256 and size_bytes"
    sha = f["sha256"]
    if not isinstance(f["path"], str) or not f["path"]:
        return "a non-empty string 'path'"
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return "a 'sha256' of 64 hex digits"
    if not (_is_int(f["size_bytes"]) and f["size_bytes"] >= 0):
        return "a non-negative integer 'size_bytes'"
    return None


def _preprocess_problem(v) -> str | None:
    expected = f"an object with 'mode' (one of {', '.join(PREPROCESS_MODES)}), 'mean' and 'std'"
    if not isinstance(v, dict) or set(v) != {"mode", "mean", "std"}:
        return expected
    try:
        Preprocess.from_dict(v)
    except Exception:  # any malformed value: the same message
        return expected
    return None


def _shapes_problem(data: dict) -> str | None:
    """The tensors' sizes against each other and the class names: ``[None|N, H, W, 3]`` in,
    ``[None|N, K]`` out, K names."""
    inp, out = data["input"]["shape"], data["output"]["shape"]
    if len(inp) != 4 or inp[3] != 3 or not all(isinstance(d, int) and d >= 1 for d in inp[1:3]):
        return "'input' must have shape [N, H, W, 3]"
    if len(out) != 2 or not (isinstance(out[1], int) and out[1] >= 2):
        return "'output' must have shape [N, classes] with at least 2 classes"
    names = data.get("class_names")
    if names is not None and len(names) != out[1]:
        return f"'class_names' must hold {out[1]} names, one per output; it holds {len(names)}"
    return None


# Sidecar field -> (what it must be, the check); None: the field may be absent.
def _fields() -> dict:
    from ..tta import TTA_MODES

    names_ok = lambda v: (  # noqa: E731
        isinstance(v, list) and len(v) >= 2 and all(isinstance(n, str) for n in v)
    )
    return {
        "model_name": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
        "format": (f"one of {', '.join(SIDECAR_FORMATS)}", SIDECAR_FORMATS.__contains__),
        "quantization": (f"one of {', '.join(QUANTIZATIONS)}", QUANTIZATIONS.__contains__),
        "input": (None, _tensor_problem),
        "output": (None, _tensor_problem),
        "artifact": (None, _file_problem),
        "source": (None, lambda v: None if v is None else _file_problem(v)),
        "class_names": ("a list of at least 2 strings", names_ok),
        "preprocessing": ("a string", lambda v: isinstance(v, str)),
        "calibration": ("an object or null", lambda v: v is None or isinstance(v, dict)),
        "export_seconds": ("a number", _is_number),
        "versions": ("an object", lambda v: isinstance(v, dict)),
        "created_at": ("a string", lambda v: isinstance(v, str)),
        "extra": ("an object", lambda v: isinstance(v, dict)),
        "tta": (f"one of {', '.join(TTA_MODES)}", TTA_MODES.__contains__),
        "source_preprocess": (None, _preprocess_problem),
        "added_softmax": ("true or false", lambda v: isinstance(v, bool)),
        "schema_version": (f"{SCHEMA_VERSION}", lambda v: _is_int(v) and v == SCHEMA_VERSION),
    }


REQUIRED = ("model_name", "format", "quantization", "input", "output", "artifact")


def sidecar_problem(data: object) -> str | None:
    """What is wrong with a parsed sidecar, naming the field and what it must be; None when it
    is a valid record. Every field is checked here so no reader meets a malformed one later."""
    if not isinstance(data, dict):
        return f"expected a JSON object, received {type(data).__name__}"
    fields = _fields()
    unknown = sorted(set(data) - set(fields) - {"from_sidecar"})
    if unknown:
        return f"unknown fields {', '.join(map(repr, unknown))}"
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        return f"missing fields {', '.join(map(repr, missing))}"
    for name, (expected, check) in fields.items():
        if name not in data:
            continue
        verdict = check(data[name])
        if expected is not None and not verdict:
            return f"{name!r} must be {expected}"
        if expected is None and verdict:
            return f"{name!r} must be {verdict}"
    return _shapes_problem(data)


def _artifact_entries(directory: Path) -> list[Path]:
    """A directory artifact's entries (files and directories), sorted, without Python bytecode
    caches (a server that imports a ``model.py`` writes ``__pycache__/`` beside it; that
    changes no artifact)."""
    return sorted(p for p in directory.rglob("*") if "__pycache__" not in p.parts)


def _artifact_files(directory: Path) -> list[Path]:
    return [p for p in _artifact_entries(directory) if p.is_file()]


def repository_file(repo: Path, name: str) -> Path:
    """``<repo>/<model>/<version>/<name>`` of a Triton repository (the highest version)."""
    found = sorted(Path(repo).glob(f"*/[0-9]*/{name}"))
    if not found:
        raise InvalidModelError(f"{repo}: no <model>/<version>/{name} inside")
    return found[-1]


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory as a tree: every entry's relative name (directories
    marked with a trailing slash, so a stray empty directory changes the hash too) and every
    file's contents, in sorted order."""
    digest = hashlib.sha256()
    path = Path(path)
    entries = _artifact_entries(path) if path.is_dir() else [path]
    for entry in entries:
        if path.is_dir():
            tail = "/" if entry.is_dir() else ""
            digest.update(f"{entry.relative_to(path)}{tail}".encode() + b"\0")
        if entry.is_file():
            with open(entry, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in _artifact_files(path))
    return path.stat().st_size


def file_record(path: Path, relative_to: Path | None = None) -> FileRecord:
    shown = os.path.relpath(path, relative_to) if relative_to else str(path)
    return FileRecord(path=shown, sha256=sha256_of(path), size_bytes=size_of(path))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sidecar_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


def artifact_of(sidecar: Path) -> Path:
    """The artifact a sidecar describes (the inverse of :func:`sidecar_path`)."""
    sidecar = Path(sidecar)
    return sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])


def read_sidecar(artifact: Path) -> Metadata:
    path = sidecar_path(artifact)
    try:
        return Metadata.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DataFormatError(f"{artifact}: no metadata sidecar; expected {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DataFormatError(f"{path}: not a JSON metadata record ({one_line(exc)})") from None
    except (TypeError, KeyError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a valid cifar-deploy metadata record: {exc}") from None


def float_input(signature: Signature = Signature()) -> TensorSpec:
    """The contract's input: float32 raw pixels, dynamic batch."""
    return TensorSpec(name=INPUT_NAME, shape=signature.batch_shape(None), dtype="float32")


def prob_output(dtype: str = "float32", signature: Signature = Signature()) -> TensorSpec:
    """The contract's output: class probabilities, dynamic batch."""
    return TensorSpec(name=OUTPUT_NAME, shape=[None, signature.classes], dtype=dtype)
