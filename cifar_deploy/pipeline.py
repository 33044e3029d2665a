"""One command from data to a deployment report: train -> export -> verify -> bench -> report.

Each stage declares the files it reads and writes. A stage whose outputs exist and are newer than
its inputs is skipped (and says so); ``force`` redoes everything. A failing stage stops the stages
after it (each needs the one before), says which and why, and leaves earlier results intact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CifarDeployError, ExportError


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

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.model

    @property
    def export_dir(self) -> Path:
        return Path(self.exports_dir) / self.model


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
    from .training import resolve_recipe
    from .training.trainer import TrainConfig, train

    recipe = resolve_recipe(cfg.model, quick=cfg.quick, epochs=cfg.epochs)
    config = TrainConfig(
        model=cfg.model,
        recipe=recipe,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
        runs_dir=cfg.runs_dir,
        max_train_samples=cfg.max_train_samples,
        time_budget=cfg.time_budget,
        model_kwargs=cfg.model_kwargs,
        verbose=cfg.verbose,
    )
    result = train(config)
    return f"test accuracy {result.test_accuracy:.2%} after {result.epochs_run} epochs"


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

    options = ExportOptions(data_dir=cfg.data_dir, force=True, seed=cfg.seed)
    artifacts = export_model(
        cfg.run_dir / "best.keras", _export_targets(cfg), options, cfg.export_dir
    )
    failed = [a for a in artifacts if a.status != "ok"]
    if failed:
        reasons = "; ".join(a.error or "" for a in failed)
        raise ExportError(f"{len(failed)} of {len(artifacts)} exports failed: {reasons}")
    total = sum(a.seconds for a in artifacts)
    return f"{len(artifacts)} artifacts in {total:.1f} s"


def _verify(cfg: PipelineConfig) -> str:
    from .serving.verify import verify

    rows = verify(
        _artifact_paths(cfg),
        reference=cfg.run_dir / "best.keras",
        data_dir=cfg.data_dir,
        samples=cfg.verify_samples,
    )
    (cfg.run_dir / "parity.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2))
    passed = sum(r.status == "pass" for r in rows[1:])
    return f"{passed} of {len(rows) - 1} artifacts pass parity"


def _bench(cfg: PipelineConfig) -> str:
    from .serving.bench import BenchConfig, benchmark

    config = BenchConfig(
        batch_sizes=cfg.bench_batch_sizes, warmup=2, min_time=cfg.bench_min_time, min_runs=5
    )
    rows, machine = benchmark(_artifact_paths(cfg), config, reference=cfg.run_dir / "best.keras")
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
    return [
        d / "report.md",
        d / "report.json",
        d / "report.html",
        d / "training.png",
        d / "latency.png",
        d / "accuracy.png",
    ]


STAGES: list[Stage] = [
    Stage(
        "train",
        lambda c: [],
        lambda c: [c.run_dir / "best.keras", c.run_dir / "run.json", c.run_dir / "history.csv"],
        _train,
    ),
    Stage("export", lambda c: [c.run_dir / "best.keras"], _export_paths, _export),
    Stage("verify", _export_paths, lambda c: [c.run_dir / "parity.json"], _verify),
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

    get_model_spec(cfg.model)  # an unknown model fails before any work
    _export_targets(cfg)  # so does an unknown format
    results: list[StageResult] = []
    blocked_by: str | None = None
    for stage in STAGES:
        if blocked_by:
            results.append(
                StageResult(stage.name, "not run", detail=f"needs {blocked_by}, which failed")
            )
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
                result = StageResult(stage.name, "failed", detail=exc.message)
            except Exception as exc:  # a stage's own bug still ends as a row, not a traceback
                result = StageResult(stage.name, "failed", detail=f"{type(exc).__name__}: {exc}")
            if result.status == "failed":
                blocked_by = stage.name
        result.seconds = time.perf_counter() - started
        result.outputs = [str(p) for p in stage.outputs(cfg) if p.exists()]
        results.append(result)
        if on_stage_end:
            on_stage_end(result)
    return results
