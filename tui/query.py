"""The `/` filter: a regex, `!` in front inverts it, `field:regex` matches one field whole.

sim-00[1-3]      node ids (or states) containing a match
!sim             everything that does not match
state:dead       rows whose state is exactly "dead"
state:suspect|dead
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    pattern: re.Pattern[str] | None  # None: matches everything
    field: str | None = None  # match only this field, in full
    invert: bool = False

    def matches(self, texts: Collection[str], fields: Mapping[str, str]) -> bool:
        """Whether a row passes: ``texts`` are searched, ``fields`` serve ``field:``."""
        if self.pattern is None:
            return True
        if self.field is not None:
            hit = self.pattern.fullmatch(fields.get(self.field, "")) is not None
        else:
            hit = any(self.pattern.search(t) for t in texts)
        return hit != self.invert


EVERYTHING = Query("", None)


def parse(text: str, fields: Collection[str] = ()) -> Query:
    """A Query from what the operator typed; ValueError if the regex is not valid."""
    raw = text.strip()
    body = raw
    invert = body.startswith("!")
    if invert:
        body = body[1:].strip()
    field = None
    name, sep, rest = body.partition(":")
    if sep and name in fields:
        field, body = name, rest.strip()
    if not body:
        return EVERYTHING if not invert else Query(raw, None)
    try:
        pattern = re.compile(f"(?:{body})" if field else body, re.IGNORECASE)
    except re.error as err:
        raise ValueError(f"bad regex: {err}") from None
    return Query(raw, pattern, field, invert)
