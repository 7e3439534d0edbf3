"""Request-path normalisation: one spelling per path, decided before routing.

Routes are matched on, and requests forwarded with, the normalised path, so no
spelling of a path (``/a/../admin``, ``/%61dmin``, ``//admin``) can reach a
route while skipping the plugins of the route it really names.
"""

from __future__ import annotations

__all__ = ["InvalidPath", "normalise"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Path characters passed through as they are (RFC 3986 pchar minus '%', plus '/').
_ALLOWED = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
# Encoded octets that would change the path's structure or meaning upstream.
_REJECTED_ESCAPES = {0x2F: "an encoded slash (%2F)", 0x5C: "an encoded backslash (%5C)", 0x00: "an encoded NUL (%00)"}


class InvalidPath(ValueError):
    """The path cannot be normalised safely; the message is shown to the client."""


def normalise(raw: bytes) -> str:
    """Return the canonical, percent-encoded form of a request path.

    - percent-encoded unreserved characters are decoded (``%7E`` -> ``~``),
      other escapes are upper-cased (``%3a`` -> ``%3A``);
    - bytes outside the allowed set are percent-encoded;
    - repeated slashes are merged; ``.`` and ``..`` segments are resolved
      (RFC 3986 section 5.2.4), never above the root.

    Raises ``InvalidPath`` for paths that have no safe reading: not starting
    with ``/``, a backslash or control character, a malformed escape, or an
    encoded slash, backslash or NUL.
    """
    if not raw.startswith(b"/"):
        raise InvalidPath("The request target must be an absolute path.")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise InvalidPath("The path has a malformed percent-encoding.")
            octet = int(raw[i + 1 : i + 3], 16)
            if octet in _REJECTED_ESCAPES:
                raise InvalidPath(f"The path contains {_REJECTED_ESCAPES[octet]}.")
            if octet in _UNRESERVED:
                out.append(octet)
            else:
                out += b"%%%02X" % octet
            i += 3
            continue
        if c == 0x5C:
            raise InvalidPath("The path contains a backslash.")
        if c < 0x20 or c == 0x7F:
            raise InvalidPath("The path contains a control character.")
        if c in _ALLOWED:
            out.append(c)
        else:
            out += b"%%%02X" % c
        i += 1
    return _remove_dot_segments(out.decode("ascii"))


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    result: list[str] = []
    for seg in segments[1:]:
        if ";" in seg and seg.partition(";")[0] in (".", ".."):
            # Some servers read "..;x" as "..": there is no safe reading of it.
            raise InvalidPath("The path has a dot segment with parameters.")
        if seg == "..":
            if result:
                result.pop()
        elif seg and seg != ".":
            result.append(seg)
    # A trailing slash (or a trailing dot segment) keeps its meaning: a directory.
    trailing = segments[-1] in ("", ".", "..") and len(segments) > 2 and bool(result)
    return "/" + "/".join(result) + ("/" if trailing else "")
