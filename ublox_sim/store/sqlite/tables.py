"""The records as table rows: column lists, rows and the SQL that reads and writes them.

``core.records`` defines the records and knows no SQL; this module maps each record
type onto its table (the table is ``cls.TABLE``, the key ``cls.KEY``, the columns the
dataclass's fields in order), so the statements below follow the records' fields.
"""

from __future__ import annotations

import dataclasses

from ...core.records import RECORD_TYPES, R, Record

_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in RECORD_TYPES}


def columns(cls: type[Record]) -> tuple[str, ...]:
    return _FIELDS[cls]


def to_row(record: Record) -> tuple[object, ...]:
    # Not dataclasses.astuple: that deep-copies every field, and rows are built by the
    # hundred thousand in a run; the fields here are all immutable scalars.
    return tuple(getattr(record, name) for name in _FIELDS[type(record)])


def from_row(cls: type[R], row: tuple[object, ...]) -> R:
    return cls(*row)  # type: ignore[arg-type]


def select_sql(cls: type[Record]) -> str:
    return f"SELECT {', '.join(columns(cls))} FROM {cls.TABLE}"


def upsert_sql(cls: type[Record]) -> str:
    """INSERT that replaces every column of an existing row (keeps the row's identity)."""
    cols = columns(cls)
    updates = ", ".join(f"{c}=excluded.{c}" for c in cols if c != cls.KEY)
    return (
        f"INSERT INTO {cls.TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT({cls.KEY}) DO UPDATE SET {updates}"
    )


def insert_sql(cls: type[Record]) -> str:
    cols = columns(cls)
    return f"INSERT INTO {cls.TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


__all__ = ["columns", "from_row", "insert_sql", "select_sql", "to_row", "upsert_sql"]
