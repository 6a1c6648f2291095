"""Shared by the legacy peer scripts: import path hygiene, output, value normalisation.

Imported by ``legacy_receiver.py`` and ``legacy_transmitter.py``, which run under the hein 0.2.3
interpreter (``python -I``, from a directory outside the repository). Importing this module makes
sure that ``import hein`` finds the legacy package and never the project's.
"""

import json
import os
import sys
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))

# Never let "import hein" find the project's package.
sys.path[:] = [
    entry
    for entry in sys.path
    if entry not in ("", ".") and os.path.abspath(entry) not in (_REPO, os.path.dirname(_HERE))
]

from byt import Byt  # noqa: E402

import hein  # noqa: E402  (the legacy one)

if hein.__version__ != "0.2.3" or os.path.dirname(os.path.abspath(hein.__file__)) == os.path.join(
    _REPO, "hein"
):
    sys.stderr.write("not the legacy hein: %s %s\n" % (hein.__version__, hein.__file__))
    sys.exit(3)

_lock = threading.Lock()


def emit(event):
    """Write one JSON event line to stdout."""
    line = json.dumps(event)
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def ready(**fields):
    emit(dict(ev="ready", version=hein.__version__, file=hein.__file__, pid=os.getpid(), **fields))


def plain(value):
    """``value`` with every legacy ``Byt`` turned into ``bytes`` (for a comparable repr)."""
    if isinstance(value, Byt):
        return bytes(value)
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    return value
