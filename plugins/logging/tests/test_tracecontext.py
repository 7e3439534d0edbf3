"""W3C Trace Context parsing, at the limits the spec sets."""

import pytest
from bascule_sdk import Headers
from bascule_sdk.tracecontext import MAX_TRACESTATE_MEMBERS, Trace, parse_traceparent, parse_tracestate

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_valid_traceparent_is_continued():
    headers = Headers.of({"traceparent": VALID, "tracestate": "congo=t61rcWkgMzE"})
    trace = Trace.from_headers(headers, sampled=False)
    assert (trace.trace_id, trace.parent_id, trace.flags) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "01",
    )
    assert trace.traceparent("b7ad6b7169203331") == "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
    assert trace.tracestate == "congo=t61rcWkgMzE"


@pytest.mark.parametrize(
    "fields",
    [
        {},  # neither field: a new trace
        {"tracestate": "congo=t61rcWkgMzE"},  # tracestate alone belongs to no trace: dropped
        {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE"},
    ],
)
def test_a_request_without_a_valid_traceparent_starts_a_trace_of_its_own(fields):
    trace = Trace.from_headers(Headers.of(fields), sampled=True)
    assert (trace.parent_id, trace.flags, trace.tracestate) == (None, "01", None)
    assert len(trace.trace_id) == 32 and trace.trace_id != "0" * 32


@pytest.mark.parametrize("values", [[], [VALID, VALID], [VALID[:-1]], [VALID + "-x"], ["xx" + VALID[2:]]])
def test_invalid_traceparent(values):
    assert parse_traceparent(values) is None


def test_unknown_flags_are_not_propagated():
    assert parse_traceparent([VALID[:-2] + "ff"])[2] == "01"
    assert parse_traceparent([VALID[:-2] + "fe"])[2] == "00"


def test_tracestate_member_limit():
    members = [f"k{i}=v{i}" for i in range(MAX_TRACESTATE_MEMBERS)]
    assert parse_tracestate([",".join(members[:16]), ",".join(members[16:])]) == ",".join(members)
    assert parse_tracestate([",".join([*members, "one=more"])]) is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["a=1,,  b=2 "], "a=1,b=2"),
        (["tenant@system=x"], "tenant@system=x"),
        (["a=1,a=2"], None),  # duplicate key
        (["A=1"], None),  # keys are lower case
        (["a"], None),
        (["a=x" + "y" * 256], None),  # a value has at most 256 characters
        (["a=" + "y" * 256], "a=" + "y" * 256),
        ([], None),
    ],
)
def test_tracestate(values, expected):
    assert parse_tracestate(values) == expected


def test_new_trace_sampled_flag():
    assert Trace.start(sampled=True).flags == "01"
    assert Trace.start(sampled=False).flags == "00"
    assert Trace.start(True).trace_id != Trace.start(True).trace_id
