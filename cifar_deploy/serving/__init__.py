"""``cifar-deploy serve``: the inference server and nothing else.

- :mod:`.server`: the application (REST routes, metrics, the served models and their one
  inference path) and :mod:`.protocol`, the Open Inference Protocol's requests and answers;
- :mod:`.batcher`: dynamic batching per model, with a bounded queue;
- :mod:`.http_lane` and :mod:`.limits`: the HTTP/1.1 protocol's guards and fast lane;
- :mod:`.grpc_server`: the gRPC service on grpc.aio;
- :mod:`.images`: uploaded images to the model's input;
- :mod:`.launch` and :mod:`.workers`: starting one server process, or several on one port.

The artifacts it serves are loaded by :mod:`cifar_deploy.runtime`.
"""
