"""cifar-deploy: CIFAR-10 image classifiers from training to deployment."""

__version__ = "0.1.0"
