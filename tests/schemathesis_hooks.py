"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Generated Idempotency-Key values repeat across cases with different bodies; the server
rightly answers such a reuse with 422, which Schemathesis would count against a
schema-valid request. Each case gets a fresh key; tests/test_auth.py pins the reuse.
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis

_keys = itertools.count()


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"schemathesis-{next(_keys)}"
