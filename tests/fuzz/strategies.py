"""Hypothesis strategies for the fuzz suite: any JSON, and JSON shaped like what each endpoint expects.

Shaped input reaches deeper than noise: a body with the right keys and wrong
values gets past the first check. Each strategy mixes the two.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

# Text as clients send it, lone surrogates and NUL included (JSON can carry both).
any_text = st.text(max_size=40) | st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb"])
scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | any_text
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4), max_leaves=12
)
# Numbers near the ranges the parameters take, and things that are not numbers.
small_numbers = st.integers(-3, 8) | st.floats(-1, 3) | st.booleans() | st.none() | any_text


def dumps(value) -> str:
    """JSON as a client could send it (NaN and Infinity included, as Python and JavaScript write them)."""
    return json.dumps(value)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Raw bodies that are not JSON, or JSON that is nested too deep to parse.
raw_bodies = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"", b"{", b"[1,]", b"\xff\xfe", b"\xed\xa0\x80", nested(50_000).encode(), b"null", b"[]"]),
)

params = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "temperature": small_numbers,
            "top_p": small_numbers,
            "max_new_tokens": small_numbers,
            "repetition_penalty": small_numbers,
            "stop": st.lists(any_text, max_size=5) | json_values,
            "model": any_text | json_values,
            "other": json_values,
        },
    ),
)

# Input a well-behaved client would send, so a share of the examples gets past every check and runs.
plain_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(str.strip)
plausible_params = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "max_new_tokens": st.integers(1, 6),
        "repetition_penalty": st.floats(1, 2),
        "stop": st.lists(plain_text, max_size=2),
    },
)
