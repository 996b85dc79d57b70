"""core.jsontext: one JSON value, or BadJson with a true reason, for any input at all."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkit.core import jsontext
from patientkit.core.jsontext import MAX_DEPTH, NOT_UTF8, TOO_DEEP, BadJson
from patientkit.server.bodies import NotJson, parse_json
from tests.helpers import examples

SURROGATE = "lone surrogate escape (\\ud800-\\udfff without its pair), not valid in UTF-8"
REASON = re.compile(
    r"invalid JSON: .+|not valid UTF-8|nesting too deep \(more than 100 levels of arrays and "
    r"objects\)|(.+: )?number too large \(\d+ digits\)|(.+: )?" + re.escape(SURROGATE)
)


def reason(data):
    with pytest.raises(BadJson) as caught:
        jsontext.loads(data)
    return caught.value.reason


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"count": ' + "9" * 5000 + "}", "count: number too large (5000 digits)"),
        ("[1, " + "-" + "7" * 4301 + "]", "[1]: number too large (4301 digits)"),
        (
            '{"readings": [{"count": 1}, {"count": ' + "1" * 4400 + "}]}",
            "readings[1].count: number too large (4400 digits)",
        ),
        ("9" * 4400, "number too large (4400 digits)"),
        ("[" * 100_000, TOO_DEEP),
        ("[" * 100_000 + "]" * 100_000, TOO_DEEP),
        ('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), TOO_DEEP),
        ('{"test_id": "\\ud800"}', f"test_id: {SURROGATE}"),
        ('{"a": ["ok", "x\\uDFFFy"]}', f"a[1]: {SURROGATE}"),
        ('{"\\udc00": 1}', f'["\\udc00"]: {SURROGATE}'),
        ('{"": {"a.b": "\\ud800"}}', f'[""]["a.b"]: {SURROGATE}'),
        ('"\\ude00\\ud83d"', SURROGATE),  # a pair in the wrong order is two lone halves
        (b'{"patient_id": "Jos\xe9"}', NOT_UTF8),
        (b'{"a": "\xed\xa0\x80"}', NOT_UTF8),  # a surrogate encoded in bytes
        (b"\xff\xfe{\x00}\x00", NOT_UTF8),  # UTF-16 is not guessed
        ('{"a": "Jos\udce9"}', NOT_UTF8),  # as read with surrogateescape
        ("{", "invalid JSON: Expecting property name enclosed in double quotes"),
        ("1 2", "invalid JSON: Extra data"),
        ("", "invalid JSON: Expecting value"),
        # the json module's message ends "at" (its offset follows): the reason is whole
        ('{"id": "a\tb"}', "invalid JSON: Invalid control character"),
        ('{"id": "a\u0001b"}'.encode(), "invalid JSON: Invalid control character"),
        ('{"id": "abc', "invalid JSON: Unterminated string"),
        ('{"id": "a\\qb"}', "invalid JSON: Invalid \\escape"),
    ],
)
def test_every_way_a_value_is_refused_has_its_true_reason(data, expected):
    assert reason(data) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH,  # as deep as allowed
        '"\\ud83d\\ude00"',  # a surrogate pair is one character
        '"\\\\ud800"',  # an escaped backslash and the letters ud800
        '{"count": ' + "9" * 4300 + "}",  # as many digits as int() takes
        '"José 中"',
    ],
)
def test_values_at_the_limits_are_taken(text):
    assert jsontext.loads(text) == json.loads(text)
    assert jsontext.loads(text.encode()) == json.loads(text)


def test_value_end_skips_strings_and_nesting():
    text = '[{"a": "]}\\"["}, [[]]] , 1'
    assert jsontext.value_end(text, 0) == text.index(" ,")
    assert jsontext.value_end("[[[", 0) is None
    assert jsontext.value_end("1", 0) is None


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["\ud800", "\udfff", "9" * 4400]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
PIECES = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        '"',
        ",",
        ":",
        "\\ud800",
        "\\ud83d\\ude00",
        "\\",
        "9" * 4400,
        "[" * 1200,
        "{" * 150,
        "-",
        "1e999",
        '"a"',
        "null",
        " ",
        "\n",
        "é",
        "\udcff",
    ]
)


def documented(data):
    """jsontext.loads(data) takes the value whole or refuses it with a known reason; a
    value taken is what json.loads gives and can be stored as UTF-8 and dumped again."""
    try:
        value = jsontext.loads(data)
    except BadJson as exc:
        assert REASON.fullmatch(exc.reason), exc.reason
        return
    assert json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogate
    assert jsontext.depth(value) <= MAX_DEPTH


@settings(max_examples=examples(150), deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_and_the_server_body_parser_agrees(data):
    documented(data)
    try:
        taken = jsontext.loads(data)
    except BadJson as exc:
        with pytest.raises(NotJson, match=re.escape(exc.reason)):
            parse_json(data)
    else:
        assert parse_json(data) == taken


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(PIECES, max_size=10).map("".join))
def test_json_ish_text(text):
    documented(text)
    documented(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=examples(100), deadline=None)
@given(JSONISH)
def test_dumped_values(value):
    text = json.dumps(value)  # escapes: "\ud800" becomes the six characters \ud800
    documented(text)
    documented(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@settings(max_examples=examples(200), deadline=None)
@given(st.text(alphabet='{}[]":,\\ \t\x01abu0123456789.-e', max_size=30))
def test_no_reason_ends_mid_sentence(text):
    try:
        jsontext.loads(text)
    except BadJson as exc:
        assert REASON.fullmatch(exc.reason), exc.reason
        assert not exc.reason.endswith((" at", " starting")), exc.reason
