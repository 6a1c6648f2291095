"""``python -m hein``: the ``hein`` command line (see :mod:`hein.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
