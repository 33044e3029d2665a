"""The server users write by hand: one ``model.predict`` per request, no batching. Baseline for
benchmarks/serve_load.py; speaks just enough of the V2 infer API (binary input, JSON output).

    python benchmarks/naive_server.py runs/cnn/best.keras PORT
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from fastapi import FastAPI, Request  # module level: route annotations resolve from here

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cifar_deploy import _tf  # noqa: E402


def main() -> None:
    import uvicorn

    keras = _tf.keras()
    model = keras.models.load_model(sys.argv[1])
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        body = await request.body()
        size = int(request.headers["Inference-Header-Content-Length"])
        head = json.loads(body[:size])
        shape = head["inputs"][0]["shape"]
        x = np.frombuffer(body[size:], np.uint8).reshape(shape).astype(np.float32)
        probs = model.predict(x, verbose=0)
        return {
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(probs.shape),
                    "data": probs.ravel().tolist(),
                }
            ]
        }

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error")


if __name__ == "__main__":
    main()
