"""Validation of the ids and names that reach SQL rows and file names.

Ids of players and tokens only ever become SQL parameters, so they may be any
printable text. Ids that become file names (PTO ids, world ids, backup names) are
held to a strict alphabet: no separators, no ``..``, no way out of their folder.
"""

from __future__ import annotations

from .errors import InvalidId
from .limits import FILE_SAFE_ID, ID_LENGTH


def check_id(value: object, what: str = "id") -> str:
    """A player or token id: ``limits.ID_LENGTH`` printable characters, no control characters."""
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, got {type(value).__name__}")
    if not ID_LENGTH.contains(len(value)):
        raise InvalidId(
            f"{what} must be {ID_LENGTH.min} to {ID_LENGTH.max} characters, got {len(value)}"
        )
    if not value.isprintable():
        raise InvalidId(f"{what} {value!r} contains control characters")
    if value != value.strip():
        raise InvalidId(f"{what} {value!r} has leading or trailing spaces")
    return value


def check_file_name(value: object, what: str = "name") -> str:
    """An id that becomes a file or folder name: letters, digits, ``_ . -``; no ``..``."""
    check_id(value, what)
    assert isinstance(value, str)
    if not FILE_SAFE_ID.fullmatch(value) or ".." in value:
        raise InvalidId(
            f"{what} {value!r} is not allowed: use letters, digits, '_', '.', '-' "
            "(starting with a letter or digit, no '..')"
        )
    return value
