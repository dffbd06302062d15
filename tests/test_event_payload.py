"""``events.payload`` writes the log's JSON field by field: byte for byte what
``json.dumps`` of the event's dict (without ``seq``) gives, for every event type."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any, get_type_hints

import numpy as np
import pytest

from ublox_sim.core import events as ev


def reference(event: ev.Event) -> str:
    fields = event.to_dict()
    del fields["seq"]
    return json.dumps(fields, separators=(",", ":"))


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


# ``slots=True`` rebuilds each class: the module's own one is the event type.
EVENT_TYPES = sorted(
    {getattr(ev, c.__name__) for c in _subclasses(ev.Event) if hasattr(ev, c.__name__)},
    key=lambda c: c.__name__,
)

VALUES: dict[str, list[Any]] = {
    "str": ["p1", 'é ü "quoted" \\ \n', ""],
    "int": [0, -3, 10**20],
    "float": [0.1, -0.0, 1e-300, 2.5e17, float("nan"), float("inf"), np.float64(0.3)],
    "Decimal": [Decimal("12.34"), Decimal("-0.01"), Decimal("1E+3")],
    "bool": [True, False],
}


def _value(hint: Any, k: int) -> Any:
    name = getattr(hint, "__name__", str(hint))
    for kind, values in VALUES.items():
        if name == kind or (kind == "str" and "str" in name and "tuple" not in name):
            return values[k % len(values)]
    if "tuple" in str(hint):
        return (("t1", 1.5, 3),) if k % 2 else ()
    return None


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__name__)
def test_payload_matches_json_dumps(cls: type[ev.Event]) -> None:
    hints = get_type_hints(cls, vars(ev))
    checked = 0
    for k in range(7):
        values = {f.name: _value(hints[f.name], k) for f in dataclasses.fields(cls) if f.init}
        values = {n: v for n, v in values.items() if v is not None or n not in ("at",)}
        values["at"] = "2026-01-01T00:00:00Z"
        values["seq"] = k
        for name in cls.internal:
            values.pop(name, None)  # internal fields have defaults and stay out of the JSON
        try:
            event = cls(**values)
        except TypeError:
            continue
        assert ev.payload(event) == reference(event)
        checked += 1
    assert checked, f"no {cls.__name__} could be built"


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__name__)
def test_numbered_is_replace(cls: type[ev.Event]) -> None:
    """``events.numbered`` gives the event ``dataclasses.replace`` gives, field for field."""
    hints = get_type_hints(cls, vars(ev))
    values = {f.name: _value(hints[f.name], 1) for f in dataclasses.fields(cls) if f.init}
    values = {n: v for n, v in values.items() if v is not None}
    values["at"], values["seq"] = "2026-01-01T00:00:00Z", 0
    event = cls(**values)
    assert ev.numbered(event, 7) == dataclasses.replace(event, seq=7)
    assert type(ev.numbered(event, 7)) is cls
    if "session_id" in values:
        assert ev.numbered(event, 7, 9) == dataclasses.replace(event, seq=7, session_id=9)
