"""``python -m cifar_deploy.cli``: the same CLI as ``cifar-deploy``."""

from . import main

if __name__ == "__main__":
    main()
