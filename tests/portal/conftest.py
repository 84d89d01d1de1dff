"""The portal tests import their helper module (portal_client.py) by name, as the suite's
own helpers next to tests/conftest.py are: put this directory on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
