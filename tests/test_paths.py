import pytest
from bascule.paths import InvalidPath, normalise


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", "/"),
        (b"/api/users", "/api/users"),
        (b"//api///users", "/api/users"),
        (b"/api/users/", "/api/users/"),
        (b"/public/../admin", "/admin"),
        (b"/public/./../admin/", "/admin/"),
        (b"/%2e%2e/admin", "/admin"),
        (b"/public/%2E%2E/admin", "/admin"),
        (b"/public/.%2e/admin", "/admin"),
        (b"/../../../etc/passwd", "/etc/passwd"),
        (b"/%61dmin", "/admin"),
        (b"/a%7Eb", "/a~b"),
        (b"/a%3ab", "/a%3Ab"),
        (b"/a%252e%252e/b", "/a%252e%252e/b"),  # double encoding stays encoded: never decoded twice
        (b"/caf\xc3\xa9", "/caf%C3%A9"),
        (b"/a b", "/a%20b"),
        (b"/a;x=1", "/a;x=1"),
        (b"/a/b/..", "/a/"),
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"api", "absolute path"),
        (b"/admin%2fsecret", "encoded slash"),
        (b"/admin%2Fsecret", "encoded slash"),
        (b"/admin%5csecret", "encoded backslash"),
        (b"/admin\\secret", "backslash"),
        (b"/a%00", "encoded NUL"),
        (b"/a\x01", "control character"),
        (b"/%zz", "malformed"),
        (b"/%4", "malformed"),
        (b"/a%", "malformed"),
        (b"/public/..;/admin", "dot segment with parameters"),
        (b"/public/.;x/admin", "dot segment with parameters"),
    ],
)
def test_normalise_rejects(raw, reason):
    with pytest.raises(InvalidPath, match=reason):
        normalise(raw)
