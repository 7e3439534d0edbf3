"""RFC 9111 arithmetic: Cache-Control parsing, HTTP dates, freshness and age.

Pure functions over header values; no I/O and no clock of their own.
"""

from __future__ import annotations

import calendar
import re
import time

__all__ = [
    "HEURISTIC_STATUSES",
    "MAX_DELTA",
    "delta_seconds",
    "http_date",
    "parse_cache_control",
    "parse_vary",
    "weak_match",
]

#: Statuses cacheable by default (RFC 9110 section 15.1): heuristic freshness applies.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: RFC 9111 section 1.2.2: delta-seconds beyond what we can represent.
MAX_DELTA = 2147483648


def parse_cache_control(values: list[str]) -> dict[str, str | None]:
    """Directives of every ``Cache-Control`` line; names lower-cased, first occurrence wins.

    ``max-age=60`` -> ``{"max-age": "60"}``; quoted values are unquoted;
    a directive without ``=`` maps to ``None``.
    """
    directives: dict[str, str | None] = {}
    for value in values:
        for name, arg in _split_directives(value):
            if name and name not in directives:
                directives[name] = arg
    return directives


def _split_directives(value: str):
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n and value[j] not in ",=":
            j += 1
        # No whitespace around "=": "max-age =60" and "max-age= 60" are not max-age=60.
        name = value[i:j].lstrip().lower()
        arg = None
        if j < n and value[j] == "=":
            j += 1
            if j < n and value[j] == '"':
                j += 1
                chars = []
                while j < n and value[j] != '"':
                    if value[j] == "\\" and j + 1 < n:
                        j += 1
                    chars.append(value[j])
                    j += 1
                arg = "".join(chars)
                while j < n and value[j] != ",":
                    j += 1
            else:
                k = j
                while j < n and value[j] != ",":
                    j += 1
                arg = value[k:j].rstrip()
        else:
            name = name.rstrip()
        yield name, arg
        i = j + 1


def delta_seconds(arg: str | None) -> int | None:
    """A delta-seconds argument as an int (capped at 2**31), ``None`` when invalid."""
    if arg is None or not arg.isdigit() or not arg.isascii():
        return None
    return min(int(arg), MAX_DELTA)


_MONTHS = {
    m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
}
_DAY = "(?:mon|tue|wed|thu|fri|sat|sun)"
_MON = "(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(rf"{_DAY}, (\d\d) {_MON} (\d{{4}}) {_TIME} GMT", re.I)
_RFC850 = re.compile(
    rf"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), "
    rf"(\d\d)-{_MON}-(\d\d) {_TIME} GMT",
    re.I,
)
_ASCTIME = re.compile(rf"{_DAY} {_MON} ([ \d]\d) {_TIME} (\d{{4}})", re.I)


def http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 section 5.6.7) as a POSIX timestamp; ``None`` when absent or invalid.

    Accepts the three formats of the RFC exactly (names in any case); anything
    else, e.g. a ``UTC`` zone or a two-digit year in IMF-fixdate, is invalid.
    """
    if not value:
        return None
    value = value.strip()
    if m := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, month, yy, hh, mm, ss = m.groups()
        year = str(_full_year(int(yy)))
    elif m := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = m.groups()
    else:
        return None
    parts = (int(year), _MONTHS[month.lower()], int(day), int(hh), int(mm), int(ss))
    if not (1 <= parts[2] <= 31 and parts[3] < 24 and parts[4] < 60 and parts[5] <= 60):
        return None
    try:
        return float(calendar.timegm((*parts, 0, 0, 0)))
    except (OverflowError, ValueError):
        return None


def _full_year(yy: int) -> int:
    """RFC 9110: a two-digit year more than 50 years in the future is in the past century."""
    this_year = time.gmtime().tm_year
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


def parse_vary(values: list[str]) -> tuple[str, ...]:
    """Field names listed by ``Vary``, lower-cased, sorted, de-duplicated; ``("*",)`` for ``*``."""
    names = {n.strip().lower() for v in values for n in v.split(",") if n.strip()}
    if "*" in names:
        return ("*",)
    return tuple(sorted(names))


def weak_match(if_none_match: str, etag: str | None) -> bool:
    """RFC 9110 section 13.1.2: does ``If-None-Match`` match ``etag`` (weak comparison)?"""
    if etag is None:
        return False
    if if_none_match.strip() == "*":
        return True
    tag = etag.strip().removeprefix("W/")
    return any(t.strip().removeprefix("W/") == tag for t in if_none_match.split(","))
