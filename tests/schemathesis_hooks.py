"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Generated Idempotency-Key values repeat across cases with different bodies; the server
rightly answers such a reuse with 422, which Schemathesis would count against a
schema-valid request. Each case gets a fresh UUID4 key (a counter would restart at
0 each run and collide with the keys a previous run stored); tests/test_auth.py pins the reuse.

Money is never a float (README): a whole-number amount is written ``5``, not ``5.0``.
JSON Schema's data model cannot tell the two apart (its ``integer`` includes 5.0), so
Schemathesis sends 5.0 for the money fields' whole-number branch; a client that follows
the document's descriptions writes 5, as this hook does (tests/test_money_floats.py pins
the refusal of 5.0).
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

MONEY_FIELDS = ("usd_obbba", "amount", "price_per_pts")


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"schemathesis-{uuid.uuid4()}"
    if isinstance(case.body, dict):
        for name in MONEY_FIELDS:
            value = case.body.get(name)
            if isinstance(value, float) and value.is_integer():
                case.body[name] = int(value)
