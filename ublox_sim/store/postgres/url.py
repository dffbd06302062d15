"""PostgreSQL URLs as messages may show them."""

from __future__ import annotations

import re


def masked(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ***."""
    out = re.sub(r"^([^:/]+://[^:@/]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", out)
