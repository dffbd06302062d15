"""The marks every Ray test module carries: ``ray`` (``pytest -m ray`` runs them alone,
``-m "not ray"`` leaves them out) and a skip, saying why, when the ``[ray]`` extra is not
installed. Kept apart from ``ray_cluster`` because that module is a pytest plugin, which
pytest imports before the test modules (importing it from one again warns)."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

RAY_TESTS = [
    pytest.mark.ray,
    pytest.mark.skipif(
        find_spec("ray") is None, reason="Ray is not installed (pip install '.[ray]')"
    ),
]
