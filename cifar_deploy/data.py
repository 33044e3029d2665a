"""Image data: CIFAR-10 (and CIFAR-100, and a folder of images per class), validation splits and
calibration samples.

Promises:
- reads CIFAR-10's canonical "python version" release, as an extracted ``cifar-10-batches-py``
  directory or as the ``cifar-10-python.tar.gz`` archive, holding any non-empty subset of
  ``data_batch_1..5`` plus ``test_batch``;
- :func:`load_dataset` also reads CIFAR-100's python release (``cifar-100-python/`` with
  ``train``, ``test`` and ``meta``: fine labels, their 100 names) and a folder with one
  subfolder of JPEG/PNG images per class (the layout ``keras.utils.image_dataset_from_directory``
  reads; ``train/`` and ``test/`` inside it when the splits are separate), resized to the size
  asked for;
- never executes code from a data file: pickles go through an unpickler that only resolves what a
  numpy array needs;
- returns uint8 images in NHWC layout (N, 32, 32, 3) and int64 labels in 0..9;
- every problem with a file is one :class:`DataFormatError` that names the file.

Lookup order for the data: an explicit path, then ``$CIFAR10_DIR``, then the Keras cache
(``~/.keras/datasets``), then Keras' own download (online users only).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import CLASS_NAMES, NUM_CLASSES
from .errors import DataFormatError, DataNotFoundError, InvalidOptionError, UnsafePickleError

log = logging.getLogger(__name__)

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
DIR_NAME = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DOWNLOAD_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
KERAS_CACHE_NAME = "cifar-10-batches-py-target"  # where keras.datasets.cifar10 extracts to

MAX_MEMBER_BYTES = 64 * 2**20  # a genuine batch file is 31 MB; larger ones are refused unread
# Dtypes a CIFAR-10 pickle's arrays may have (pixels are u1; other numeric types are refused
# later with a clear message, object arrays never get this far).
_NUMERIC_DTYPES = frozenset(
    {"u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8", "b1"}
)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only what numpy's own array encoding uses, each through a
    guard that accepts exactly the arguments numpy writes: ``_reconstruct(ndarray, (0,), b"b")``
    (an empty array the data then fills, so its size is checked against the bytes present;
    any other shape would allocate memory the file does not hold), ``dtype`` of a numeric type,
    and ``_codecs.encode(text, "latin1")``, which Python 3 writes for byte strings."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source
        multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
        self._globals = {
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct(multiarray._reconstruct),
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct(multiarray._reconstruct),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): self._dtype,
            ("_codecs", "encode"): self._encode,
        }

    def _refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(
            f"{self._source}: refusing {what}; a CIFAR-10 pickle may only hold numpy arrays, "
            "lists, dicts, numbers and strings, encoded as numpy and Python write them",
            hint="the file is not a genuine CIFAR-10 batch; do not load it",
        )

    def _reconstruct(self, real):
        def guarded(cls, shape, typecode):
            if cls is not np.ndarray or tuple(shape) != (0,) or typecode != b"b":
                raise self._refuse(f"an array constructed as {shape!r:.40} (numpy writes (0,))")
            return real(np.ndarray, (0,), b"b")

        return guarded

    def _dtype(self, spec, align=False, copy=True):
        if isinstance(spec, bytes):  # the canonical release is a Python 2 pickle: str is bytes
            spec = spec.decode("latin1")
        if spec not in _NUMERIC_DTYPES:
            raise self._refuse(f"dtype {spec!r:.40}")
        return np.dtype(spec, align=bool(align), copy=bool(copy))

    def _encode(self, text, encoding="utf-8"):
        if not isinstance(text, str) or encoding != "latin1":
            raise self._refuse(f"_codecs.encode with {type(text).__name__}, {encoding!r:.20}")
        return text.encode("latin1")

    def find_class(self, module: str, name: str):
        found = self._globals.get((module, name))
        if found is None:
            raise self._refuse(f"to load {module}.{name}")
        return found


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle ``data`` with the restricted unpickler; errors name ``source``."""
    if not data:
        raise DataFormatError(f"{source}: file is empty; expected a CIFAR-10 pickle")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as exc:
        raise DataFormatError(
            f"{source}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
            "expected a CIFAR-10 batch"
        ) from None


def parse_batch(
    obj: object, source: str, label_key: bytes = b"labels", classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Turn one unpickled batch dict into (images uint8 NHWC, labels int64), validating it
    (``label_key``: CIFAR-100's files hold ``b"fine_labels"``)."""
    if not isinstance(obj, dict) or b"data" not in obj or label_key not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataFormatError(
            f"{source}: expected a dict with b'data' and {label_key!r}, received {keys}"
        )
    data, labels = obj[b"data"], obj[label_key]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataFormatError(f"{source}: expected data of shape (N, 3072), received {shape}")
    if data.dtype != np.uint8:
        raise DataFormatError(f"{source}: expected uint8 pixels, received {data.dtype}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"{source}: expected {data.shape[0]} integer labels, received "
            f"shape {labels.shape} of {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataFormatError(
            f"{source}: labels must lie in 0..{classes - 1}, "
            f"received {labels.min()}..{labels.max()}"
        )
    # Rows hold the R, G, B planes of 32x32 row-major images: (N, 3, 32, 32) -> NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


@dataclass
class CifarData:
    """The loaded dataset: uint8 NHWC images, int64 labels, and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""
    train_batches: tuple[str, ...] = field(default_factory=tuple)

    @property
    def missing_batches(self) -> tuple[str, ...]:
        return tuple(b for b in TRAIN_BATCHES if b not in self.train_batches)


class _DirReader:
    def __init__(self, root: Path):
        self.root = root

    def names(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.is_file()}

    def read(self, name: str) -> bytes:
        path = self.root / name
        _check_member_size(self.label(name), path.stat().st_size)
        return path.read_bytes()

    def label(self, name: str) -> str:
        return str(self.root / name)


class _TarReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")
            # Members are only read into memory, never extracted, so member paths cannot escape.
            self._members = {Path(m.name).name: m for m in self._tar.getmembers() if m.isfile()}
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataFormatError(
                f"{path}: not a readable CIFAR-10 archive ({exc}); expected {ARCHIVE_NAME}"
            ) from None

    def names(self) -> set[str]:
        return set(self._members)

    def read(self, name: str) -> bytes:
        member = self._members[name]
        _check_member_size(self.label(name), member.size)  # declared size, before reading
        try:
            fh = self._tar.extractfile(member)
            return fh.read(MAX_MEMBER_BYTES + 1) if fh else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataFormatError(
                f"{self.label(name)}: archive member unreadable ({exc})"
            ) from None

    def label(self, name: str) -> str:
        return f"{self.path}:{name}"


def _check_member_size(source: str, size: int) -> None:
    if size > MAX_MEMBER_BYTES:
        raise DataFormatError(
            f"{source}: {size:,} bytes; a CIFAR-10 batch file is about 31 MB "
            f"(refused above {MAX_MEMBER_BYTES:,} bytes without reading it)"
        )


def _reader_for(path: Path) -> _DirReader | _TarReader | None:
    """A reader for a batches directory, an archive, or a directory holding either."""
    if path.is_file():
        return _TarReader(path)
    if not path.is_dir():
        return None
    for candidate in (path / DIR_NAME, path):
        if candidate.is_dir() and (candidate / TEST_BATCH).exists():
            return _DirReader(candidate)
    if (path / ARCHIVE_NAME).is_file():
        return _TarReader(path / ARCHIVE_NAME)
    return None


def _keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def not_found_message() -> str:
    return (
        "CIFAR-10 not found and could not be downloaded; provide it with --data-dir PATH, "
        f"or CIFAR10_DIR=PATH, or put {DIR_NAME}/ or {ARCHIVE_NAME} in the Keras cache "
        f"({_keras_cache()})"
    )


def _download() -> Path:
    """Keras' own download of the canonical archive (network required)."""
    from . import _tf

    keras = _tf.keras()
    try:
        return Path(
            keras.utils.get_file(
                KERAS_CACHE_NAME, origin=DOWNLOAD_URL, extract=True, file_hash=DOWNLOAD_SHA256
            )
        )
    except Exception as exc:  # urllib and keras raise many types; all mean "no download"
        raise DataNotFoundError(
            not_found_message(), hint=f"download failed: {type(exc).__name__}"
        ) from None


def locate(data_dir: str | os.PathLike | None = None, download: bool = True):
    """Find the data: explicit path, $CIFAR10_DIR, the Keras cache, then Keras' download."""
    explicit = data_dir if data_dir is not None else os.environ.get("CIFAR10_DIR") or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        reader = _reader_for(path)
        if reader is None:
            origin = "--data-dir" if data_dir is not None else "CIFAR10_DIR"
            raise DataNotFoundError(
                f"{origin}={path} holds no CIFAR-10 data; expected a {DIR_NAME} directory "
                f"with {TEST_BATCH} and data_batch_N files, or {ARCHIVE_NAME}"
            )
        return reader
    cache = _keras_cache()
    for candidate in (cache / DIR_NAME, cache / KERAS_CACHE_NAME, cache / ARCHIVE_NAME):
        if candidate.exists() and (reader := _reader_for(candidate)) is not None:
            return reader
    if not download:
        raise DataNotFoundError(not_found_message())
    return _reader_for(_download()) or _fail_not_found()


def _fail_not_found():
    raise DataNotFoundError(not_found_message())


def _read_class_names(reader) -> tuple[str, ...]:
    if META_FILE not in reader.names():
        return CLASS_NAMES
    meta = safe_unpickle(reader.read(META_FILE), reader.label(META_FILE))
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataFormatError(
            f"{reader.label(META_FILE)}: expected {NUM_CLASSES} label names, received {names!r:.80}"
        )
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _warn_missing_classes(split: str, labels: np.ndarray, class_names=CLASS_NAMES) -> None:
    """A split without some classes trains (or measures) a classifier that cannot be right."""
    missing = sorted(set(range(len(class_names))) - set(np.unique(labels).tolist()))
    if missing:
        names = ", ".join(class_names[i] for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        log.warning(
            "the %s data has no images of %d of %d classes (%s%s)",
            split,
            len(missing),
            len(class_names),
            names,
            more,
        )


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = True) -> CifarData:
    """Load every training batch present plus the test batch.

    Warns (logging) when fewer than five training batches are present.
    """
    reader = locate(data_dir, download=download)
    names = reader.names()
    present = tuple(b for b in TRAIN_BATCHES if b in names)
    if not present:
        raise DataFormatError(
            f"{reader.label('')}: no training batches; expected at least one of "
            f"{', '.join(TRAIN_BATCHES)}"
        )
    if TEST_BATCH not in names:
        raise DataFormatError(f"{reader.label('')}: {TEST_BATCH} is missing")
    parts = [
        parse_batch(safe_unpickle(reader.read(b), reader.label(b)), reader.label(b))
        for b in present
    ]
    if len(present) < len(TRAIN_BATCHES):
        log.warning(
            "only %d of 5 CIFAR-10 training batches found (%s): %d training images",
            len(present),
            ", ".join(present),
            sum(len(p[1]) for p in parts),
        )
    x_test, y_test = parse_batch(
        safe_unpickle(reader.read(TEST_BATCH), reader.label(TEST_BATCH)), reader.label(TEST_BATCH)
    )
    for split, labels in (("training", [p[1] for p in parts]), ("test", [y_test])):
        _warn_missing_classes(split, np.concatenate(labels))
    return CifarData(
        x_train=np.concatenate([p[0] for p in parts]),
        y_train=np.concatenate([p[1] for p in parts]),
        x_test=x_test,
        y_test=y_test,
        class_names=_read_class_names(reader),
        source=reader.label("").rstrip(":/") or str(reader.label("")),
        train_batches=present,
    )


def stratified_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices drawn without replacement, class shares as in ``labels``, seeded.

    Each class gets ``floor(count * share)`` places; the remainder goes to the classes with the
    largest fractional parts, so the draw is exactly ``count`` long and deterministic.
    """
    labels = np.asarray(labels)
    if not 0 <= count <= labels.size:
        raise InvalidOptionError(
            f"cannot draw {count} samples from {labels.size}; expected 0..{labels.size}"
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * count / labels.size
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: count - quota.sum()]:
        quota[i] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def train_val_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A seeded, stratified split into (train, validation)."""
    if not 0.0 < val_fraction < 1.0:
        raise InvalidOptionError(
            f"validation split must be between 0 and 1 (exclusive), received {val_fraction}"
        )
    count = int(round(len(y) * val_fraction))
    if not 1 <= count < len(y):
        raise InvalidOptionError(
            f"{len(y)} training images with a validation split of {val_fraction:g} leave "
            f"{count} for validation and {len(y) - count} for training; each needs at least one",
            hint="train on more images (e.g. --max-train-samples 100)",
        )
    val_idx = stratified_indices(y, count, seed)
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return (x[mask], y[mask]), (x[val_idx], y[val_idx])


def subsample(x: np.ndarray, y: np.ndarray, count: int | None, seed: int):
    """At most ``count`` examples, stratified and seeded; all of them when ``count`` is None."""
    if count is None or count >= len(y):
        return x, y
    idx = stratified_indices(y, count, seed)
    return x[idx], y[idx]


# --- Other datasets: CIFAR-100's python release, and a folder of images per class -------------

CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")
CIFAR100_CLASSES = 100
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FOLDER_IMAGES = 200_000  # files one image folder may hold before it is refused
EXPECTED_DATA = (
    "expected CIFAR-10's python release (cifar-10-batches-py/ or cifar-10-python.tar.gz), "
    "CIFAR-100's (cifar-100-python/), or a folder with one subfolder of JPEG/PNG images per class"
)


def _cifar100_root(path: Path) -> Path | None:
    for candidate in (path / CIFAR100_DIR, path):
        if candidate.is_dir() and all((candidate / f).is_file() for f in CIFAR100_FILES):
            return candidate
    return None


def _class_dirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_splits(path: Path) -> tuple[Path, Path] | None:
    """(train root, test root) of an image folder: ``train/`` and ``test/`` when both are
    there, else the folder itself for both; None when ``path`` is no image folder."""
    if not path.is_dir():
        return None
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path / "train", path / "test"
    dirs = _class_dirs(path)
    if dirs and any(f.suffix.lower() in IMAGE_SUFFIXES for d in dirs for f in d.iterdir()):
        return path, path
    return None


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A JPEG or PNG file as uint8 RGB ``(height, width, 3)`` at ``size`` = (height, width),
    decoded as the server decodes an upload (:func:`cifar_deploy.imaging.to_rgb`)."""
    from .imaging import ImageRefused, to_rgb

    try:
        return to_rgb(str(path), size)
    except ImageRefused as exc:
        raise DataFormatError(f"{path}: {exc.message}") from None


def _read_folder(root: Path, size: tuple[int, int], names: list[str] | None):
    """(images, labels, class names) of one split of an image folder."""
    dirs = _class_dirs(root)
    if names is None:
        names = [d.name for d in dirs]
    elif [d.name for d in dirs] != names:
        raise DataFormatError(
            f"{root}: holds the classes {[d.name for d in dirs]!r:.120}; expected the same "
            f"classes as the training folder, {names!r:.120}"
        )
    if len(names) < 2:
        raise DataFormatError(
            f"{root}: holds {len(names)} class folder(s); expected one subfolder of images per "
            "class, at least two classes"
        )
    files = [
        (label, f)
        for label, d in enumerate(dirs)
        for f in sorted(d.iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(files) > MAX_FOLDER_IMAGES:
        raise DataFormatError(
            f"{root}: holds {len(files):,} images; at most {MAX_FOLDER_IMAGES:,} are read"
        )
    empty = [d.name for i, d in enumerate(dirs) if not any(label == i for label, _ in files)]
    if empty:
        raise DataFormatError(
            f"{root}: no JPEG or PNG images in the class folder(s) {', '.join(empty[:5])}; "
            "expected at least one image per class"
        )
    images = np.stack([read_image(f, size) for _, f in files])
    labels = np.array([label for label, _ in files], dtype=np.int64)
    return images, labels, names


def load_image_folder(path: Path, size: tuple[int, int] = (32, 32)) -> CifarData:
    """A folder with one subfolder of JPEG/PNG images per class (``train/`` and ``test/`` when
    the splits are separate, else the same images serve both), resized to ``size``."""
    splits = _folder_splits(Path(path))
    if splits is None:
        raise DataFormatError(f"{path}: no class subfolders with images; {EXPECTED_DATA}")
    train_root, test_root = splits
    x_train, y_train, names = _read_folder(train_root, size, None)
    if test_root == train_root:
        log.warning(
            "%s has no train/ and test/ folders: calibration and evaluation use the same %d images",
            path,
            len(y_train),
        )
        x_test, y_test = x_train, y_train
    else:
        x_test, y_test, _ = _read_folder(test_root, size, names)
    return CifarData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=tuple(names),
        source=str(path),
        train_batches=("folder",),
    )


def load_cifar100(path: Path) -> CifarData:
    """CIFAR-100's python release (``train``, ``test``, ``meta``): fine labels, 100 names."""
    root = _cifar100_root(Path(path))
    if root is None:
        raise DataFormatError(f"{path}: expected {CIFAR100_DIR}/ with train, test and meta")
    reader = _DirReader(root)

    def split(name: str):
        return parse_batch(
            safe_unpickle(reader.read(name), reader.label(name)),
            reader.label(name),
            label_key=b"fine_labels",
            classes=CIFAR100_CLASSES,
        )

    (x_train, y_train), (x_test, y_test) = split("train"), split("test")
    meta = safe_unpickle(reader.read("meta"), reader.label("meta"))
    names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != CIFAR100_CLASSES:
        raise DataFormatError(
            f"{reader.label('meta')}: expected {CIFAR100_CLASSES} fine label names, "
            f"received {names!r:.80}"
        )
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return CifarData(x_train, y_train, x_test, y_test, names, str(root), ("train",))


def load_dataset(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    size: tuple[int, int] = (32, 32),
) -> CifarData:
    """CIFAR-10, CIFAR-100 or an image folder, whichever ``data_dir`` (else ``$CIFAR10_DIR``)
    holds; without either, CIFAR-10 from the Keras cache or its download. Images come at
    ``size`` = (height, width): an image folder is resized while it is read, CIFAR with
    :func:`fit_images`."""
    explicit = data_dir if data_dir is not None else os.environ.get("CIFAR10_DIR") or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_dir() and _reader_for(path) is None:
            if _cifar100_root(path) is not None:
                return fit_dataset(load_cifar100(path), size)
            if _folder_splits(path) is not None:
                return load_image_folder(path, size)
            origin = "--data-dir" if data_dir is not None else "CIFAR10_DIR"
            raise DataNotFoundError(f"{origin}={path} holds no data set; {EXPECTED_DATA}")
    return fit_dataset(load_cifar10(data_dir, download=download), size)


def fit_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 NHWC images resized (bilinear, as the server resizes uploads) to ``size`` =
    (height, width); the same array when they already have it."""
    if images.shape[1:3] == tuple(size):
        return images
    from PIL import Image

    out = np.empty((len(images), size[0], size[1], 3), np.uint8)
    for i, image in enumerate(images):
        resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        out[i] = np.asarray(resized)
    return out


def fit_dataset(data: CifarData, size: tuple[int, int]) -> CifarData:
    """``data`` with every image at ``size`` (height, width)."""
    if data.x_test.shape[1:3] == tuple(size) and data.x_train.shape[1:3] == tuple(size):
        return data
    import dataclasses

    return dataclasses.replace(
        data, x_train=fit_images(data.x_train, size), x_test=fit_images(data.x_test, size)
    )


MAX_LABELS_BYTES = 1 << 20  # a labels file larger than this is refused unread


def read_labels(path: str | os.PathLike) -> list[str]:
    """A labels file: one class name per line, in output order (blank lines at the end are
    ignored); an empty, blank-named, duplicated or oversized file is one DataFormatError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise DataFormatError(
                f"{path}: {path.stat().st_size:,} bytes; a labels file is one name per line "
                f"(refused above {MAX_LABELS_BYTES:,} bytes)"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read the labels file ({exc})") from None
    names = [line.strip() for line in text.rstrip("\n\r ").splitlines()]
    if len(names) < 2 or not all(names):
        raise DataFormatError(
            f"{path}: expected one class name per line, at least two and none blank; "
            f"received {len(names)} line(s)"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataFormatError(f"{path}: class names repeat ({', '.join(dupes[:5])})")
    return names
