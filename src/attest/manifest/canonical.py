"""RFC 8785 (JSON Canonicalization Scheme) for the JSON subset our documents use.

Our documents hold objects, arrays, strings, integers, ``true``, ``false`` and ``null``; never
floats. For that subset RFC 8785 reduces to:

- strings: UTF-8; escape ``"`` and ``\\``; control characters below U+0020 as ``\\b \\t \\n \\f
  \\r`` or ``\\u00xx`` (lower-case hex); every other character literally (RFC 8785 §3.2.2.2);
- integers: plain decimal, which is what the ECMAScript number serialisation (§3.2.2.3) prints
  for integers of magnitude below 2**53 (I-JSON, RFC 7493 §2.2) — larger ones are refused;
- objects: members sorted by the UTF-16 code units of their names (§3.2.3), no whitespace.

``parse_json`` is the bounded, strict reader: it refuses invalid UTF-8, lone surrogates,
duplicate member names (RFC 7493 §2.3), floats, NaN/Infinity, integers outside ±(2**53 - 1) and
nesting deeper than ``MAX_DEPTH``, raising only ``ManifestFormatError``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from attest.errors import ManifestFormatError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 16


_dumps = json.JSONEncoder(ensure_ascii=False).encode

JsonValue = Any  # dict[str, JsonValue] | list[JsonValue] | str | int | bool | None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(s: str) -> str:
    """RFC 8785 §3.2.2.2 string serialisation. Python's JSON encoder with ensure_ascii off
    emits exactly that (short escapes for \\b \\f \\n \\r \\t, \\u00xx in lower case for
    the other controls, quote and backslash escaped, everything else verbatim), and does it in
    C; only lone surrogates (not I-JSON) need refusing first."""
    if _SURROGATE.search(s):
        raise ManifestFormatError("string holds a lone surrogate (not I-JSON)")
    return _dumps(s)


def _utf16_key(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly like the sequence of UTF-16 code units.
    return name.encode("utf-16-be", "surrogatepass")


def _emit(value: JsonValue, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ManifestFormatError(f"nesting deeper than {MAX_DEPTH}")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ManifestFormatError(f"integer {value} outside the I-JSON range ±(2**53-1)")
        out.append(str(int(value)))
    elif isinstance(value, str):
        out.append(_escape(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=_checked_key)):
            if i:
                out.append(",")
            out.append(_escape(key))
            out.append(":")
            _emit(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, float):
        raise ManifestFormatError("floating-point numbers are not allowed in our documents")
    else:
        raise ManifestFormatError(f"{type(value).__name__} is not a JSON value")


def _checked_key(name: object) -> bytes:
    if not isinstance(name, str):
        raise ManifestFormatError("object member names must be strings")
    return _utf16_key(name)


def canonicalize(value: JsonValue) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``."""
    out: list[str] = []
    _emit(value, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:  # pragma: no cover - lone surrogates caught in _escape
        raise ManifestFormatError(f"not encodable as UTF-8: {exc}") from None


def _no_float(text: str) -> Any:
    # The token is not repeated: a refusal names the rule, never echoes the input (a node's API
    # answers these messages to whoever pushed the document).
    raise ManifestFormatError("a number with a fraction or an exponent is not allowed")


def _no_constant(text: str) -> Any:
    raise ManifestFormatError("a non-finite number (not JSON) is not allowed")


def _bounded_int(text: str) -> int:
    if len(text) > 17:  # 2**53 has 16 digits; allow a sign
        raise ManifestFormatError(f"integer {text[:20]}... outside the I-JSON range")
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise ManifestFormatError(f"integer {value} outside the I-JSON range ±(2**53-1)")
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestFormatError(f"duplicate member name {key[:40]!r}")
        out[key] = value
    return out


def _check_depth(value: JsonValue) -> None:
    stack: list[tuple[JsonValue, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ManifestFormatError(f"nesting deeper than {MAX_DEPTH}")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def parse_json(data: bytes, *, max_size: int) -> JsonValue:
    """Parse ``data`` strictly (see the module docstring). Size is checked before anything else."""
    if len(data) > max_size:
        raise ManifestFormatError(f"document is {len(data)} bytes, limit {max_size}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestFormatError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_pairs,
            parse_float=_no_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except ManifestFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ManifestFormatError(f"not JSON: {exc}") from None
    _check_depth(value)
    _check_strings(value)
    return value


def _check_strings(value: JsonValue) -> None:
    """Refuse lone surrogates (escaped as ``\\udxxx`` in the input), which I-JSON forbids."""
    stack: list[JsonValue] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _surrogate_free(item)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _surrogate_free(key)
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


def _surrogate_free(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestFormatError("string holds a lone surrogate (not I-JSON)") from None


def parse_canonical(data: bytes, *, max_size: int) -> JsonValue:
    """Parse ``data`` and refuse it unless it is byte-for-byte its own canonical form."""
    value = parse_json(data, max_size=max_size)
    if canonicalize(value) != data:
        raise ManifestFormatError(
            "document is not in RFC 8785 canonical form (re-serialise it with `attest manifest`)"
        )
    return value
