"""The offline checks, one module per verb, each run against exported artifacts:

- :mod:`.verify`: ``cifar-deploy verify``, accuracy parity against the Keras model (and
  :mod:`.consumers`, the libraries apps embed, such as MediaPipe);
- :mod:`.bench`: ``cifar-deploy bench``, latency and throughput;
- :mod:`.inspection`: ``cifar-deploy inspect``, what to check in a .tflite before shipping;
- :mod:`.predict`: ``cifar-deploy predict``, classifying image files.
"""
