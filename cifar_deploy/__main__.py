"""``python -m cifar_deploy``: the same CLI as ``cifar-deploy``."""

from .cli import main

if __name__ == "__main__":
    main()
