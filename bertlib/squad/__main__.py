"""``python -m bertlib.squad``: the same as ``bert-squad`` (see bertlib.cli.squad)."""
import sys

from bertlib.cli.squad import main

if __name__ == "__main__":
    sys.exit(main())
