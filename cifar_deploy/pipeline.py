"""One command from data to a deployment report: train -> export -> verify -> bench -> report.

A model of the user's own (``source``: a .keras or .h5 file) skips training: its export declares
the preprocessing, softmax and class names it was given, and verify and bench compare with it.

Each stage declares the files it reads and writes. A stage whose outputs exist and are newer than
its inputs is skipped (and says so); ``force`` redoes everything. A failing stage stops the stages
after it (each needs the one before), says which and why, and leaves earlier results intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CifarDeployError, ExportError

# --quick: the whole pipeline (train, export, verify, bench, report) in 15 minutes of wall time
# on any machine. Training gets what the later stages will not need, estimated from the model's
# inference speed measured on this machine before training.
QUICK_PIPELINE_SECONDS = 15 * 60.0
TEST_IMAGES = 10_000  # CIFAR-10's test split, what verify evaluates
# Measured on a 2-core AMD EPYC (AVX2, no AVX-512): the CNN's Keras inference ran 254 images/s
# at batch 256, and the export stage took 3.4-4 s per artifact; other machines scale by their
# own rate.
REFERENCE_RATE = 254.0
EXPORT_SECONDS_PER_ARTIFACT = 5.0
LOAD_SECONDS_AT_REFERENCE = 1.0  # loading one artifact in bench
REPORT_SECONDS = 10.0
MARGIN_SECONDS = 60.0  # kept back for estimates that come out short (slow phases of a VM)
VERIFY_SHARE = 0.25  # verify may use this share of the budget; beyond it, fewer images
MIN_VERIFY_SAMPLES = 2_000
MIN_TRAIN_SECONDS = 60.0


@dataclass
class PipelineConfig:
    model: str = "cnn"
    quick: bool = False
    epochs: int | None = None
    time_budget: float | None = None  # seconds of training wall time; None: epochs
    formats: tuple[str, ...] = ("all",)
    data_dir: Path | None = None
    runs_dir: Path = Path("runs")
    exports_dir: Path = Path("exports")
    force: bool = False
    seed: int = 42
    max_train_samples: int | None = None
    verify_samples: int | None = None  # None: the whole test split
    bench_batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    bench_min_time: float = 0.5  # seconds per benchmark cell
    model_kwargs: dict = field(default_factory=dict)  # builder overrides (tests)
    verbose: int = 0  # training progress: 0 silent, 1 bar, 2 a line per epoch
    total_budget: float | None = None  # seconds for every stage together; None: see budget()
    # title -> a context manager yielding console.progress's advance(); None: no progress shown
    progress: Callable | None = None
    plan: BudgetPlan | None = None  # set by run_pipeline when there is a total budget
    # A model file of the user's own: no training; ``model`` names its runs/ and exports/ folders.
    source: Path | None = None
    preprocess: object = None  # contract.Preprocess declared for ``source``; None: raw
    add_softmax: bool = False
    class_names: list[str] | None = None

    @property
    def budget(self) -> float | None:
        """Seconds for the whole pipeline: ``total_budget``, or with ``--quick`` (and neither
        epochs nor a training budget) the 15-minute promise; None: no whole-pipeline budget."""
        if self.total_budget is not None:
            return self.total_budget
        if self.quick and self.epochs is None and self.time_budget is None:
            return QUICK_PIPELINE_SECONDS
        return None

    @property
    def checkpoint(self) -> Path:
        """The Keras model that is exported and compared with."""
        return Path(self.source) if self.source is not None else self.run_dir / "best.keras"

    @property
    def declaration(self) -> Path:
        """What was declared for a model of the user's own, an input of the export stage: a
        changed --preprocess, --add-softmax or --labels exports again."""
        return self.run_dir / "declared.json"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.model

    @property
    def export_dir(self) -> Path:
        return Path(self.exports_dir) / self.model


@dataclass
class BudgetPlan:
    """How a whole-pipeline budget is shared: estimates for the stages after training (seconds),
    from the inference ``rate`` (images/s) measured on this machine; training gets the rest."""

    total: float
    started: float  # perf_counter() when the pipeline started
    rate: float
    export: float
    verify: float
    verify_samples: int | None  # None: the whole test split
    bench: float
    report: float
    margin: float
    spent: dict = field(default_factory=dict)  # stage -> seconds it took, as stages end
    verify_samples_used: int | None = None  # what verify ran on, planned again at its start

    @property
    def after_training(self) -> float:
        return self.export + self.verify + self.bench + self.report + self.margin

    def training_seconds(self, now: float | None = None) -> float:
        """What is left for training at ``now``, at least ``MIN_TRAIN_SECONDS``."""
        now = time.perf_counter() if now is None else now
        left = self.total - (now - self.started) - self.after_training
        return max(left, MIN_TRAIN_SECONDS)

    def verify_samples_now(self, artifacts: int, export_seconds: float, now: float) -> int | None:
        """Verify's sample, planned again when it starts: what the time left (after bench,
        report and half the margin) allows at the planned rate, slowed by as much as export
        ran over its estimate (a slow phase of the machine), never more than first planned
        nor fewer than ``MIN_VERIFY_SAMPLES``; None: the whole split."""
        slowdown = min(max(export_seconds / max(self.export, 1e-9), 1.0), 4.0)
        left = self.total - (now - self.started) - self.bench - self.report - self.margin / 2
        fits = int(max(left, 0.0) * self.rate / slowdown / max(artifacts, 1)) // 500 * 500
        planned = self.verify_samples or TEST_IMAGES
        if fits >= planned:
            return self.verify_samples
        return max(fits, MIN_VERIFY_SAMPLES)

    def describe(self) -> str:
        images = f"{self.verify_samples:,}" if self.verify_samples else f"{TEST_IMAGES:,}"
        return (
            f"{self.total:.0f} s budget: export ~{self.export:.0f} s, verify ~{self.verify:.0f} s "
            f"on {images} images, bench ~{self.bench:.0f} s, {self.margin:.0f} s margin "
            f"(inference {self.rate:.0f} images/s here)"
        )


def plan_budget(
    total: float,
    rate: float,
    artifacts: int,
    batch_sizes: tuple[int, ...],
    bench_min_time: float,
    verify_samples: int | None = None,
    started: float | None = None,
    bench_warmup: int = 2,
    bench_min_runs: int = 5,
) -> BudgetPlan:
    """Estimates for export, verify and bench at ``rate`` images/s. Verify runs every
    artifact over the test split (the reference's predictions come from training); when that
    would take more than ``VERIFY_SHARE`` of the budget, it runs on a stratified sample that
    fits (at least ``MIN_VERIFY_SAMPLES`` images) unless ``verify_samples`` is given."""
    slower = REFERENCE_RATE / rate  # > 1 on a machine slower than the one the constants fit
    if verify_samples is None:
        fits = int(VERIFY_SHARE * total * rate / max(artifacts, 1)) // 500 * 500
        verify_samples = None if fits >= TEST_IMAGES else max(fits, MIN_VERIFY_SAMPLES)
    images = verify_samples or TEST_IMAGES
    cells = (artifacts + 2) * len(batch_sizes)  # + Keras model.predict and direct-call rows
    per_cell = sum(
        bench_warmup * b / rate + max(bench_min_time, bench_min_runs * b / rate)
        for b in batch_sizes
    ) / max(len(batch_sizes), 1)
    return BudgetPlan(
        total=total,
        started=time.perf_counter() if started is None else started,
        rate=rate,
        export=EXPORT_SECONDS_PER_ARTIFACT * artifacts * slower,
        verify=artifacts * images / rate,
        verify_samples=verify_samples,
        bench=cells * per_cell + (artifacts + 1) * LOAD_SECONDS_AT_REFERENCE * slower,
        report=REPORT_SECONDS,
        margin=MARGIN_SECONDS,
    )


def inference_rate(model: str, model_kwargs: dict | None = None, batch: int = 256) -> float:
    """Images per second of the freshly built (float32) Keras model at ``batch``, measured
    after one warm-up call: a few seconds that tell how fast this machine is right now."""
    from .training import get_model_spec

    spec = get_model_spec(model)
    kwargs = dict(model_kwargs or {})
    if spec.accepts_weights:
        kwargs["weights"] = None
    net = spec.build(**kwargs)
    images = np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32)
    net(images, training=False)
    seconds = []
    for _ in range(2):  # the slower of two calls: a plan from a fast moment comes out short
        started = time.perf_counter()
        net(images, training=False)
        seconds.append(time.perf_counter() - started)
    return batch / max(seconds)


def _progress(cfg: PipelineConfig, title: str, **kwargs):
    """``cfg.progress(title)``, or a context that swallows every report."""
    if cfg.progress is None:
        return contextlib.nullcontext(lambda *args, **kw: None)
    return cfg.progress(title, **kwargs)


@dataclass
class StageResult:
    name: str
    status: str  # done, skipped, failed, not run
    seconds: float = 0.0
    detail: str = ""
    outputs: list[str] = field(default_factory=list)


@dataclass
class Stage:
    name: str
    inputs: Callable[[PipelineConfig], list[Path]]
    outputs: Callable[[PipelineConfig], list[Path]]
    run: Callable[[PipelineConfig], str]  # returns a one-line detail


def up_to_date(inputs: list[Path], outputs: list[Path]) -> bool:
    """All outputs exist and none is older than the newest input."""
    if not outputs or not all(p.exists() for p in outputs):
        return False
    newest_input = max((p.stat().st_mtime for p in inputs if p.exists()), default=0.0)
    return min(p.stat().st_mtime for p in outputs) >= newest_input


# ---------------------------------------------------------------------------------------------
# The stages


def _train(cfg: PipelineConfig) -> str:
    from .console import budget_reporter
    from .training import resolve_recipe
    from .training.trainer import TrainConfig, train

    recipe = resolve_recipe(cfg.model, quick=cfg.quick, epochs=cfg.epochs)
    budget = cfg.plan.training_seconds() if cfg.plan else cfg.time_budget
    config = TrainConfig(
        model=cfg.model,
        recipe=recipe,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
        runs_dir=cfg.runs_dir,
        max_train_samples=cfg.max_train_samples,
        time_budget=budget,
        model_kwargs=cfg.model_kwargs,
        verbose=cfg.verbose,
    )
    if budget is None:
        result = train(config)
    else:
        with _progress(cfg, "training", total=budget, timed=True) as advance:
            config.on_progress = budget_reporter(advance)
            result = train(config)
    detail = (
        f"test accuracy {result.test_accuracy:.2%} "
        f"({result.info['test_accuracy_flip_tta']:.2%} with flip TTA) "
        f"after {result.epochs_run} epochs, {result.info['steps_run']} steps"
    )
    if budget is not None:
        detail += f" in a {budget:.0f} s training budget"
    return detail


def _export_targets(cfg: PipelineConfig):
    """Every quantization of every requested format ("all": every format)."""
    from .export import every_quantization

    return every_quantization(list(cfg.formats))


def _artifact_paths(cfg: PipelineConfig) -> list[Path]:
    return [cfg.export_dir / fmt.target(cfg.model, q) for fmt, q in _export_targets(cfg)]


def _export_paths(cfg: PipelineConfig) -> list[Path]:
    """The export stage's outputs: every artifact's sidecar (written after its artifact)."""
    from .export.metadata import sidecar_path

    return [sidecar_path(p) for p in _artifact_paths(cfg)]


def _export(cfg: PipelineConfig) -> str:
    """Every target in one call: the model is loaded once and converters share its SavedModel.
    Every target is attempted; any failed one fails the stage, naming each."""
    from .export import ExportOptions, export_model

    options = ExportOptions(
        data_dir=cfg.data_dir,
        force=True,
        seed=cfg.seed,
        preprocess=cfg.preprocess,
        add_softmax=cfg.add_softmax,
        class_names=cfg.class_names,
        name=cfg.model if cfg.source is not None else None,
    )
    artifacts = export_model(cfg.checkpoint, _export_targets(cfg), options, cfg.export_dir)
    failed = [a for a in artifacts if a.status != "ok"]
    if failed:
        reasons = "; ".join(a.error or "" for a in failed)
        raise ExportError(f"{len(failed)} of {len(artifacts)} exports failed: {reasons}")
    total = sum(a.seconds for a in artifacts)
    return f"{len(artifacts)} artifacts in {total:.1f} s"


def _verify(cfg: PipelineConfig) -> str:
    from .checks.verify import verify
    from .console import pass_reporter

    samples = cfg.verify_samples
    if samples is None and cfg.plan is not None:
        export_seconds = cfg.plan.spent.get("export", cfg.plan.export)
        samples = cfg.plan.verify_samples_now(
            len(_export_targets(cfg)), export_seconds, time.perf_counter()
        )
        cfg.plan.verify_samples_used = samples
    kept: dict = {}
    with _progress(cfg, "verifying", total=None) as advance:
        rows = verify(
            _artifact_paths(cfg),
            reference=cfg.checkpoint,
            data_dir=cfg.data_dir,
            samples=samples,
            on_progress=pass_reporter(advance),
            keep=kept,
        )
    # What the report's confusion matrices and reliability diagram are drawn from.
    np.savez_compressed(
        cfg.run_dir / "predictions.npz",
        **{k: v.astype(np.float16) if k != "labels" else v for k, v in kept.items()},
    )
    (cfg.run_dir / "parity.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2))
    passed = sum(r.status == "pass" for r in rows[1:])
    return f"{passed} of {len(rows) - 1} artifacts pass parity on {rows[0].samples:,} test images"


def _bench(cfg: PipelineConfig) -> str:
    from .checks.bench import BenchConfig, benchmark

    config = BenchConfig(
        batch_sizes=cfg.bench_batch_sizes, warmup=2, min_time=cfg.bench_min_time, min_runs=5
    )
    rows, machine = benchmark(_artifact_paths(cfg), config, reference=cfg.checkpoint)
    (cfg.run_dir / "bench.json").write_text(
        json.dumps({"machine": machine, "rows": [r.to_dict() for r in rows]}, indent=2, default=str)
    )
    failed = sum(r.status == "failed" for r in rows)
    return f"{len(rows)} cells, {failed} failed"


def _report(cfg: PipelineConfig) -> str:
    from .report import write_report

    paths = write_report(cfg.run_dir)
    return f"{paths['markdown']}"


def _report_outputs(cfg: PipelineConfig) -> list[Path]:
    d = cfg.run_dir
    training = [] if cfg.source is not None else [d / "training.png"]
    return [
        d / "report.md",
        d / "report.json",
        d / "report.html",
        *training,
        d / "latency.png",
        d / "accuracy.png",
        d / "confusion.png",
        d / "reliability.png",
        d / "per_class.png",
    ]


def _write_declaration(cfg: PipelineConfig) -> None:
    """``declared.json`` for a model of the user's own, rewritten only when it changes (its
    modification time is what tells the export stage to run again)."""
    text = json.dumps(
        {
            "source": str(cfg.source),
            "preprocess": cfg.preprocess.to_dict() if cfg.preprocess is not None else None,
            "add_softmax": cfg.add_softmax,
            "class_names": cfg.class_names,
        },
        indent=2,
    )
    path = cfg.declaration
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


STAGES: list[Stage] = [
    Stage(
        "train",
        lambda c: [],
        lambda c: [c.run_dir / "best.keras", c.run_dir / "run.json", c.run_dir / "history.csv"],
        _train,
    ),
    Stage("export", lambda c: [c.checkpoint, c.declaration], _export_paths, _export),
    Stage(
        "verify",
        _export_paths,
        lambda c: [c.run_dir / "parity.json", c.run_dir / "predictions.npz"],
        _verify,
    ),
    Stage("bench", _export_paths, lambda c: [c.run_dir / "bench.json"], _bench),
    Stage(
        "report",
        lambda c: [c.run_dir / "parity.json", c.run_dir / "bench.json", c.run_dir / "history.csv"],
        _report_outputs,
        _report,
    ),
]


def run_pipeline(
    cfg: PipelineConfig,
    on_stage_start: Callable[[str], None] | None = None,
    on_stage_end: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run every stage in order; returns one result per stage."""
    from .training import get_model_spec

    pipeline_started = time.perf_counter()
    if cfg.source is None:
        get_model_spec(cfg.model)  # an unknown model fails before any work
    targets = _export_targets(cfg)  # so does an unknown format
    if cfg.source is not None:
        _write_declaration(cfg)
    elif cfg.budget is not None:
        cfg.plan = plan_budget(
            cfg.budget,
            inference_rate(cfg.model, cfg.model_kwargs),
            len(targets),
            cfg.bench_batch_sizes,
            cfg.bench_min_time,
            cfg.verify_samples,
            pipeline_started,
        )
    results: list[StageResult] = []
    blocked_by: str | None = None
    for stage in STAGES:
        if blocked_by:
            results.append(
                StageResult(stage.name, "not run", detail=f"needs {blocked_by}, which failed")
            )
            continue
        if stage.name == "train" and cfg.source is not None:
            results.append(StageResult("train", "skipped", detail=f"your model: {cfg.source}"))
            if on_stage_end:
                on_stage_end(results[-1])
            continue
        if on_stage_start:
            on_stage_start(stage.name)
        started = time.perf_counter()
        if not cfg.force and up_to_date(stage.inputs(cfg), stage.outputs(cfg)):
            result = StageResult(
                stage.name, "skipped", detail="up to date (outputs newer than inputs)"
            )
        else:
            try:
                detail = stage.run(cfg)
                result = StageResult(stage.name, "done", detail=detail)
            except CifarDeployError as exc:
                hint = f" ({exc.hint})" if exc.hint else ""
                result = StageResult(stage.name, "failed", detail=exc.message + hint)
            except Exception as exc:  # a stage's own bug still ends as a row, not a traceback
                result = StageResult(stage.name, "failed", detail=f"{type(exc).__name__}: {exc}")
            if result.status == "failed":
                blocked_by = stage.name
        result.seconds = time.perf_counter() - started
        if cfg.plan is not None:
            cfg.plan.spent[stage.name] = result.seconds
        result.outputs = [str(p) for p in stage.outputs(cfg) if p.exists()]
        results.append(result)
        if on_stage_end:
            on_stage_end(result)
    _write_record(cfg, results, time.perf_counter() - pipeline_started)
    return results


def _write_record(cfg: PipelineConfig, results: list[StageResult], seconds: float) -> None:
    """``runs/<model>/pipeline.json``: every stage, the wall time and the budget's plan."""
    if not cfg.run_dir.is_dir():
        return
    record = {
        "stages": [dataclasses.asdict(r) for r in results],
        "wall_seconds": round(seconds, 1),
        "budget_seconds": cfg.budget,
        "plan": None
        if cfg.plan is None
        else {
            **{k: v for k, v in dataclasses.asdict(cfg.plan).items() if k != "started"},
            "after_training": cfg.plan.after_training,
        },
    }
    (cfg.run_dir / "pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
