"""``cifar-deploy models``: the model registry."""

from __future__ import annotations

from .. import console
from .common import JsonFlag, app, handles_errors


@app.command("models")
@handles_errors
def models_cmd(json_out: JsonFlag = False):
    """List the model registry: name, parameters, input and default recipe."""
    from ..training import model_catalog

    rows = model_catalog()
    if json_out:
        return console.print_json(rows)
    columns = ["name", "parameters", "input", "default recipe", "description"]
    cells = [
        (r["name"], f"{r['parameters']:,}", r["input"], r["recipe"], r["description"]) for r in rows
    ]
    console.out.print(console.table("Models", columns, cells))
