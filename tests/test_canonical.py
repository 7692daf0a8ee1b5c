"""Canonical JSON is RFC 8785 (JCS) for everything signed or hashed; the pre-RFC-8785 scheme stays readable."""

from __future__ import annotations

import pytest

from protocol.canonical import LEGACY, RFC8785, canonical_json, digest_json


@pytest.mark.parametrize("value, jcs", [
    (1.0, b"1"), (1e-05, b"0.00001"), (1e21, b"1e+21"), (1e-7, b"1e-7"), (-0.0, b"0"), (0.991234567891234, b"0.991234567891234"),
    ({"b": 1, "a": [True, None, "é"]}, '{"a":[true,null,"é"],"b":1}'.encode()),
    ({"\u00e9": 1, "\U0001F600": 2, "z": 3}, '{"z":3,"é":1,"\U0001F600":2}'.encode()),   # keys sorted by UTF-16 code units
])
def test_rfc8785_serialisation(value, jcs):
    assert canonical_json(value) == jcs


def test_the_legacy_scheme_is_the_old_sorted_keys_json():
    assert canonical_json({"b": 1e-05, "a": 1.0}, LEGACY) == b'{"a":1.0,"b":1e-05}'
    assert canonical_json({"b": 1e-05, "a": 1.0}, RFC8785) == b'{"a":1,"b":0.00001}'
    assert digest_json({"a": 1}) == digest_json({"a": 1}, RFC8785)


@pytest.mark.parametrize("bad, where", [({"x": float("nan")}, "$.x"), ([1, float("inf")], "$[1]"), ({"n": 2**53}, "$.n"), ({1: "a"}, "key")])
def test_values_without_a_canonical_form_are_refused_with_their_path(bad, where):
    with pytest.raises(ValueError, match=__import__("re").escape(where)):
        canonical_json(bad)


def test_an_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="rfc8785"):
        canonical_json({}, "xml")
