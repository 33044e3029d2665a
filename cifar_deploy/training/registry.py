"""The model registry: names -> builders and default recipes (as timm's ``register_model``).

Every registered builder returns a functional Keras model that takes raw RGB pixels 0..255,
float32, NHWC ``(N, 32, 32, 3)``, normalizes inside its graph, and outputs 10 class probabilities.
Wide ResNets are also reachable by pattern: ``wrn-<depth>-<width>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..contract import INPUT_DESCRIPTION
from ..errors import InvalidOptionError, unknown_name
from .recipes import Recipe


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., object]
    recipe: Recipe
    description: str
    builder_kwargs: tuple[tuple[str, object], ...] = ()
    accepts_weights: bool = False  # takes --weights (pretrained backbones)
    takes_weight_decay: bool = True  # the builder takes the recipe's L2 ``weight_decay``
    quick_recipe: Recipe | None = None  # the --quick preset, where the family has one
    quick_time_budget: float | None = None  # seconds: --quick trains this long, on any machine
    # (model, "head" | "finetune", fraction) -> None, for families with a pretrained backbone
    set_trainable: Callable[[object, str, float], None] | None = None
    # (model, uint8 training images) -> None: weights set from the data before training
    fit_to_data: Callable[[object, object], None] | None = None

    def build(self, **kwargs):
        return self.builder(**{**dict(self.builder_kwargs), **kwargs})


_REGISTRY: dict[str, ModelSpec] = {}
_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], ModelSpec]]] = []


def register_model(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def register_pattern(pattern: str, factory: Callable[[re.Match], ModelSpec]) -> None:
    """Names matching ``pattern`` resolve through ``factory`` (e.g. any ``wrn-D-W``)."""
    _PATTERNS.append((re.compile(pattern), factory))


def list_models() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    _load_families()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, factory in _PATTERNS:
        if match := pattern.fullmatch(name):
            return factory(match)
    raise unknown_name("model", name, list(_REGISTRY) + ["wrn-<depth>-<width>"])


def create_model(name: str, **kwargs):
    """Build the named model; ``kwargs`` override the builder's defaults."""
    return get_model_spec(name).build(**kwargs)


def _load_families() -> None:
    # Importing the family modules runs their register_model calls (one file per family).
    from . import airbench, cnn, mobilenetv2, wide_resnet  # noqa: F401


def resolve_recipe(name: str, quick: bool = False, **overrides) -> Recipe:
    """The model's default (or ``--quick``) recipe with CLI overrides applied (None = keep)."""
    spec = get_model_spec(name)
    if quick and spec.quick_recipe is None:
        with_quick = [n for n in list_models() if _REGISTRY[n].quick_recipe is not None]
        raise InvalidOptionError(
            f"--quick is a preset for {', '.join(with_quick)}; received model {name!r}"
        )
    return (spec.quick_recipe if quick else spec.recipe).with_overrides(**overrides)


def resolve_time_budget(
    name: str, quick: bool = False, epochs: int | None = None, time_budget: float | None = None
) -> float | None:
    """Seconds of training wall time, or None to train the recipe's epochs: an explicit budget
    wins; ``--quick`` is its model's budget unless ``--epochs`` asks for a fixed count."""
    if time_budget is not None:
        return time_budget
    if quick and epochs is None:
        return get_model_spec(name).quick_time_budget
    return None


def recipe_summary(recipe: Recipe) -> str:
    """One line per recipe for tables: phases, batch, regularization."""
    parts = []
    for p in recipe.phases:
        opt = "SGD+Nesterov" if p.optimizer == "sgd" and p.nesterov else p.optimizer.upper()
        sched = (
            f"warmup {p.warmup_epochs:g}+cosine"
            if p.warmup_epochs
            else ("cosine" if p.cosine else "constant")
        )
        parts.append(f"{p.name}: {p.epochs} ep {opt} lr {p.lr:g} {sched}")
    extras = [f"batch {recipe.batch_size}"]
    if recipe.label_smoothing:
        extras.append(f"label smoothing {recipe.label_smoothing:g}")
    if recipe.mixup_alpha:
        extras.append(f"MixUp {recipe.mixup_alpha:g}")
    if recipe.weight_decay:
        extras.append(f"L2 {recipe.weight_decay:g}")
    if recipe.crop_padding or recipe.flip:
        extras.append("crop/flip")
    if recipe.early_stopping_patience:
        extras.append(f"early stop {recipe.early_stopping_patience}")
    return "; ".join(parts + [", ".join(extras)])


def model_catalog() -> list[dict]:
    """Every registered model, built once (no pretrained download) to count its parameters."""
    rows = []
    for name in list_models():
        spec = _REGISTRY[name]
        model = spec.build(weights=None) if spec.accepts_weights else spec.build()
        rows.append(
            {
                "name": name,
                "parameters": int(model.count_params()),
                "input": INPUT_DESCRIPTION,
                "recipe": recipe_summary(spec.recipe),
                "quick_preset": spec.quick_recipe is not None,
                "description": spec.description,
            }
        )
    return rows
