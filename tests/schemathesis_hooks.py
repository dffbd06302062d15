"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Generated Idempotency-Key values repeat across cases with different bodies; the server
rightly answers such a reuse with 422, which Schemathesis would count against a
schema-valid request. Each case gets a fresh UUID4 key (a counter would restart at
0 each run and collide with the keys a previous run stored); tests/test_auth.py pins the reuse.
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"schemathesis-{uuid.uuid4()}"
