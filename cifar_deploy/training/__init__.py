"""Training: the model registry, one module per model family, recipes and the trainer."""

from .registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    model_catalog,
    recipe_summary,
    register_model,
    resolve_recipe,
    resolve_time_budget,
)

__all__ = [
    "ModelSpec",
    "create_model",
    "get_model_spec",
    "list_models",
    "model_catalog",
    "recipe_summary",
    "register_model",
    "resolve_recipe",
    "resolve_time_budget",
]
