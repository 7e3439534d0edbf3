"""RFC 9111 arithmetic: Cache-Control parsing, HTTP dates, freshness and age.

Pure functions over header values; no I/O and no clock of their own.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections.abc import Iterator

from bascule_sdk import Headers

__all__ = [
    "HEURISTIC_STATUSES",
    "MAX_DELTA",
    "UNDERSTOOD_STATUSES",
    "Directives",
    "age_value",
    "delta_seconds",
    "directives",
    "http_date",
    "parse_cache_control",
    "parse_targeted",
    "parse_vary",
    "select_directives",
    "weak_match",
]

#: Cache-Control directives by lower-cased name; ``None`` for a directive without argument.
Directives = dict[str, str | None]

#: Statuses cacheable by default (RFC 9110 section 15.1): heuristic freshness applies.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: RFC 9111 section 1.2.2: delta-seconds beyond what we can represent.
MAX_DELTA = 2147483648
#: Statuses whose caching requirements this cache understands (RFC 9111 section 5.2.2.3,
#: ``must-understand``): the final statuses of RFC 9110 section 15 it may store, i.e. without
#: 206 (no partial storage), 304, and the deprecated or unused 305 and 306. Any other
#: status (429 of RFC 6585, which must never be stored; 299; 599) is not understood.
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | set(range(500, 506))
)


def parse_cache_control(values: list[str]) -> dict[str, str | None]:
    """Directives of every ``Cache-Control`` line; names lower-cased, first occurrence wins.

    ``max-age=60`` -> ``{"max-age": "60"}``; quoted values are unquoted;
    a directive without ``=`` maps to ``None``.
    """
    directives: dict[str, str | None] = {}
    for value in values:
        for name, arg in _directives_of(value) if len(value) <= _REMEMBERED else _split_directives(value):
            if name and name not in directives:
                directives[name] = arg
    return directives


#: The longest field value whose parse is remembered: services send few distinct Cache-Control
#: values, each parsed a few times per stored response; a client's long one is parsed, not kept.
_REMEMBERED = 256


@functools.lru_cache(maxsize=1024)
def _directives_of(value: str) -> tuple[tuple[str, str | None], ...]:
    return tuple(_split_directives(value))


def _split_directives(value: str) -> Iterator[tuple[str, str | None]]:
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


def age_value(value: str | None) -> int:
    """The ``Age`` of a response (RFC 9111 section 5.1), 0 when absent or invalid.

    ``value`` is the first ``Age`` field line. A list (``Age: 5, 10``) counts by
    its first member; when that member is not delta-seconds the field is ignored.
    """
    if value is None:
        return 0
    return delta_seconds(value.split(",", 1)[0].strip()) or 0


def directives(headers: Headers, field: str = "cache-control") -> dict[str, str | None]:
    """The directives of ``field``: Cache-Control syntax, or a targeted field's (RFC 9213)."""
    if field == "cache-control":
        return parse_cache_control(headers.get_all("cache-control"))
    return parse_targeted(headers.get_all(field)) or {}


def select_directives(headers: Headers, targets: tuple[str, ...]) -> tuple[str, dict[str, str | None]]:
    """The field that sets this cache's policy for a response, and its directives.

    RFC 9213 section 2.2: the first field of the target list with a valid,
    non-empty value; then Cache-Control (and Expires) are ignored. Without one,
    ``("cache-control", ...)``.
    """
    for name in targets:
        parsed = parse_targeted(headers.get_all(name))
        if parsed is not None:
            return name, parsed
    return "cache-control", parse_cache_control(headers.get_all("cache-control"))


def parse_targeted(values: list[str]) -> dict[str, str | None] | None:
    """A targeted field (RFC 9213 section 2.1) as directives; ``None`` when empty or invalid.

    The value is a Structured Field Dictionary (RFC 9651 section 3.2), parsed
    strictly: a parse error makes the whole field invalid. Members map to
    directives as Cache-Control's would: Boolean true -> no argument, Integer,
    Decimal, Token -> their text, String -> its content. Members whose value
    cannot be a directive argument (false, Byte Sequence, Inner List, Date) are
    dropped; parameters are ignored.
    """
    text = ", ".join(values).strip(" ")
    if not text:
        return None
    try:
        members = _SfParser(text).dictionary()
    except ValueError:
        return None
    return {k: v for k, (keep, v) in members.items() if keep}


_LCALPHA = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_KEY_CHARS = frozenset(_LCALPHA + _DIGITS + "_-.*")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~:/" + _DIGITS + _LCALPHA + _LCALPHA.upper())
_B64_CHARS = frozenset(_LCALPHA + _LCALPHA.upper() + _DIGITS + "+/=")


class _SfParser:
    """Just enough of RFC 9651 section 4.2 for a Dictionary; raises ``ValueError``."""

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def dictionary(self) -> dict[str, tuple[bool, str | None]]:
        out: dict[str, tuple[bool, str | None]] = {}
        while True:
            key = self.key()
            if self.peek() == "=":
                self.i += 1
                if self.peek() == "(":
                    self.inner_list()
                    value: tuple[bool, str | None] = (False, None)
                else:
                    value = self.bare_item()
            else:
                value = (True, None)  # Boolean true: a directive without argument
            self.parameters()
            out[key] = value  # a repeated key: the last one wins (section 4.2.2)
            while self.peek() in (" ", "\t"):
                self.i += 1
            if not self.peek():
                return out
            if self.peek() != ",":
                raise ValueError("expected a comma")
            self.i += 1
            while self.peek() in (" ", "\t"):
                self.i += 1
            if not self.peek():
                raise ValueError("trailing comma")

    def key(self) -> str:
        start = self.i
        if not (self.peek() and (self.peek() in _LCALPHA or self.peek() == "*")):
            raise ValueError("a key starts with a lowercase letter or *")
        while self.peek() and self.peek() in _KEY_CHARS:
            self.i += 1
        return self.s[start : self.i]

    def parameters(self) -> None:
        while self.peek() == ";":
            self.i += 1
            while self.peek() == " ":
                self.i += 1
            self.key()
            if self.peek() == "=":
                self.i += 1
                self.bare_item()

    def inner_list(self) -> None:
        self.i += 1  # "("
        while True:
            while self.peek() == " ":
                self.i += 1
            if self.peek() == ")":
                self.i += 1
                self.parameters()
                return
            self.bare_item()
            self.parameters()
            if self.peek() not in (" ", ")"):
                raise ValueError("bad inner list")

    def bare_item(self) -> tuple[bool, str | None]:
        c = self.peek()
        if c == "-" or (c and c in _DIGITS):
            return True, self.number()
        if c == '"':
            return True, self.string()
        if c and (c in _LCALPHA or c in _LCALPHA.upper() or c == "*"):
            start = self.i
            while self.peek() and self.peek() in _TOKEN_CHARS:
                self.i += 1
            return True, self.s[start : self.i]
        if c == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0 or not set(self.s[self.i + 1 : end]) <= _B64_CHARS:
                raise ValueError("bad byte sequence")
            self.i = end + 1
            return False, None
        if c == "?":
            flag = self.s[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise ValueError("bad boolean")
            self.i += 2
            return flag == "1", None
        if c == "@":
            self.i += 1
            if "." in self.number():
                raise ValueError("a date is an integer")
            return False, None
        raise ValueError("not a bare item")

    def number(self) -> str:
        start = self.i
        if self.peek() == "-":
            self.i += 1
        digits = self.i
        while self.peek() and self.peek() in _DIGITS:
            self.i += 1
        whole = self.i - digits
        if whole == 0:
            raise ValueError("a number needs digits")
        if self.peek() == ".":
            self.i += 1
            frac = self.i
            while self.peek() and self.peek() in _DIGITS:
                self.i += 1
            if whole > 12 or not 1 <= self.i - frac <= 3:
                raise ValueError("bad decimal")
        elif whole > 15:
            raise ValueError("integer too long")
        return self.s[start : self.i]

    def string(self) -> str:
        self.i += 1
        chars: list[str] = []
        while True:
            c = self.peek()
            if not c:
                raise ValueError("unterminated string")
            self.i += 1
            if c == '"':
                return "".join(chars)
            if c == "\\":
                c = self.peek()
                if c not in ('"', "\\"):
                    raise ValueError("bad escape")
                self.i += 1
            elif not " " <= c <= "~":
                raise ValueError("bad string character")
            chars.append(c)


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
    if len(value) == 29:  # IMF-fixdate's length: what servers send
        return _fixdate(value)
    if m := _RFC850.fullmatch(value):
        day, month, yy, hh, mm, ss = m.groups()
        year = str(_full_year(int(yy)))
    elif m := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = m.groups()
    else:
        return None
    return _timestamp(year, month, day, hh, mm, ss)


@functools.lru_cache(maxsize=1024)  # a response's Date and Last-Modified, read a few times when it is stored
def _fixdate(value: str) -> float | None:
    if m := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = m.groups()
        return _timestamp(year, month, day, hh, mm, ss)
    return None


def _timestamp(year: str, month: str, day: str, hh: str, mm: str, ss: str) -> float | None:
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
