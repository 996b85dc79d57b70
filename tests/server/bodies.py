"""Request bodies for the fuzz tests of the single-POST endpoints: any bytes, or JSON of
any shape (with the values that broke parsers: huge and past-int64 numbers, lone
surrogates, NUL) encoded as a client might, escaped or raw UTF-8."""

import json

from hypothesis import strategies as st

LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, 10**30, 0.5, float("inf"), "", "x\x00", "\ud800"]),
    st.text(max_size=6),
)


def json_values(leaves: st.SearchStrategy = LEAVES) -> st.SearchStrategy:
    """JSON values of any shape built of `leaves`."""
    return st.recursive(
        leaves,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    )


def _encoded(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def bodies(shaped: st.SearchStrategy) -> st.SearchStrategy:
    """Any bytes, or `shaped` (bodies near the endpoint's own) or any JSON value, encoded."""
    values = st.one_of(shaped, json_values())
    return st.one_of(st.binary(max_size=200), st.builds(_encoded, values, st.booleans()))
