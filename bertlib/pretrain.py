"""``python -m bertlib.pretrain`` = ``bert-pretrain`` (see :mod:`bertlib.cli.pretrain`)."""
import sys

from .cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
