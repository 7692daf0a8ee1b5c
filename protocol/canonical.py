"""Canonical JSON: one byte string per value, so digests and signatures are reproducible.

Everything this project signs or hashes is serialized with the JSON Canonicalization Scheme, RFC 8785
(the `rfc8785` package): sorted keys, no insignificant whitespace, UTF-8, and numbers written as
ECMAScript writes them (`1` for 1.0, `0.00001` for 1e-05), so any JCS implementation in any language
reproduces the bytes. Records made before the switch used sorted-keys `json.dumps` (`LEGACY`); their
formats say so (schema `llamdex.schema/v1`, receipts `.../privacy-receipt/v1`, ledger `llamdex.ledger/v1`)
and they are still verified with the scheme they were made with.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import rfc8785

RFC8785 = "rfc8785"
LEGACY = "sorted-json"        # json.dumps(sort_keys, compact separators, ensure_ascii=False): records made before RFC 8785
SCHEMES = (RFC8785, LEGACY)
SAFE_INTEGER = 2**53 - 1      # RFC 8785 (I-JSON) numbers are IEEE doubles: larger integers would lose digits


MAX_JSON_DEPTH = 64           # every document of the protocol nests fewer than 8 levels


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` for text that crossed the wire or a file someone else wrote. A document nested past `max_depth` is a
    `json.JSONDecodeError` like any other malformed one: Python's parser gives up with a RecursionError near 1000 levels,
    which no caller expects, and shallower ones could still exhaust the stack of the recursive code that reads them."""
    doc = text if isinstance(text, str) else ""
    try:
        value = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", doc, 0) from None
    stack = [(value, 1)]
    while stack:   # iterative: the check itself must not recurse
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", doc, 0)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


def _check(value: Any, path: str = "$") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: non-finite float {value!r} has no canonical JSON form")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SAFE_INTEGER:
        raise ValueError(f"{path}: integer {value} is outside ±(2^53 - 1), which canonical JSON (RFC 8785) cannot carry exactly; "
                         "send it as a string")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: object key {k!r} is not a string")
            _check(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")


def canonical_json(value: Any, scheme: str = RFC8785) -> bytes:
    """The canonical bytes of `value` under `scheme` (RFC 8785 unless verifying an older record)."""
    _check(value)
    if scheme == RFC8785:
        return rfc8785.dumps(value)
    if scheme == LEGACY:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    raise ValueError(f"unknown canonical JSON scheme {scheme!r}; known: {list(SCHEMES)}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(value: Any, scheme: str = RFC8785) -> str:
    """`sha256:<hex>` of the canonical JSON of `value`."""
    return "sha256:" + sha256_hex(canonical_json(value, scheme))


__all__ = ["LEGACY", "RFC8785", "SCHEMES", "canonical_json", "digest_json", "sha256_hex"]
