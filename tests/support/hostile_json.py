"""Non-standard JSON for every JSON request body an app's OpenAPI describes (issue 15).

Python's ``json`` module, and so FastAPI, reads ``NaN``, ``Infinity``, ``-Infinity``,
``1e999`` (a float overflow: infinity) and lone surrogates (``"\\ud800"``), none of which
RFC 8259 JSON has; an answer that echoes them back cannot be encoded (that was a 500 and a
logged traceback per request). Schemathesis cannot send them: its generators draw floats with
``allow_nan=False, allow_infinity=False`` and exclude surrogates ("cannot be encoded for the
wire"), checked in schemathesis 4.32. So these cases are derived here from the app's own
``openapi()``: every POST/PUT/PATCH operation with an ``application/json`` body, every string,
number and integer member (nested objects, array items and dictionary values followed through
``$ref``/``anyOf``), each replaced by each token, plus the whole body and a dictionary key as a
lone surrogate. A route added later is covered without touching the tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

TOKENS = {
    "nan": "NaN",
    "infinity": "Infinity",
    "minus-infinity": "-Infinity",
    "1e999": "1e999",
    "minus-1e999": "-1e999",
    "lone-surrogate": '"\\ud800"',
    "lone-low-surrogate": '"\\udfff"',
    "surrogate-inside": '"ab\\udc00cd"',
}
# What an answer must never contain: the tokens as sent, escaped or decoded.
ECHOES = ("NaN", "Infinity", "1e999", "ud800", "udfff", "udc00", "\ud800", "\udfff", "\udc00")
_MARK = "\u2603hostile\u2603"  # a string no schema example contains
_MAX_DEPTH = 6


@dataclass(frozen=True, slots=True)
class Case:
    method: str
    path: str
    body: bytes
    where: str  # e.g. "POST /v1/evidence pcrs.sha256[0] = NaN", for the failure message


def _resolve(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    for key in ("anyOf", "oneOf", "allOf"):  # nullable members: the first non-null branch
        branches = [b for b in schema.get(key, ()) if _resolve(spec, b).get("type") != "null"]
        if branches:
            return _resolve(spec, branches[0])
    return schema


def _example(spec: Mapping[str, Any], schema: Mapping[str, Any], depth: int = 0) -> Any:
    """A small value of ``schema``'s shape (required members only)."""
    s = _resolve(spec, schema)
    if "enum" in s:
        return s["enum"][0]
    kind = s.get("type")
    if kind == "object" or "properties" in s:
        if depth >= _MAX_DEPTH:
            return {}
        props = s.get("properties", {})
        return {k: _example(spec, props[k], depth + 1) for k in s.get("required", ()) if k in props}
    if kind == "array":
        n = int(s.get("minItems", 0))
        return [_example(spec, s.get("items", {}), depth + 1) for _ in range(n)]
    if kind == "integer":
        return int(s.get("minimum", 0))
    if kind == "number":
        return float(s.get("minimum", 0))
    if kind == "boolean":
        return False
    if kind == "string":
        return "00" * max(1, int(s.get("minLength", 1)) // 2 + 1)
    return None


def _leaves(
    spec: Mapping[str, Any], schema: Mapping[str, Any], path: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], bool]]:
    """(path, is_key) of every string/number/integer member; a dictionary's key as well."""
    if len(path) > _MAX_DEPTH:
        return
    s = _resolve(spec, schema)
    kind = s.get("type")
    if kind in ("string", "number", "integer", "boolean") or ("enum" in s and kind is None):
        yield path, False
    elif kind == "array":
        yield from _leaves(spec, s.get("items", {}), (*path, 0))
    elif kind == "object" or "properties" in s or "additionalProperties" in s:
        for name, sub in s.get("properties", {}).items():
            yield from _leaves(spec, sub, (*path, name))
        extra = s.get("additionalProperties")
        if isinstance(extra, Mapping):
            yield (*path, "k"), True
            yield from _leaves(spec, extra, (*path, "k"))


def _with(
    spec: Mapping[str, Any],
    schema: Mapping[str, Any],
    doc: Any,
    path: tuple[Any, ...],
    value: Any,
    *,
    key: bool,
) -> Any:
    """``doc`` with ``value`` at ``path`` (containers made on the way; ``key``: the last step
    is a dictionary key, renamed to ``value``)."""
    if not path:
        return value
    s = _resolve(spec, schema)
    step, rest = path[0], path[1:]
    if isinstance(step, int):
        items = list(doc) if isinstance(doc, list) else []
        sub = s.get("items", {})
        inner = items[0] if items else _example(spec, sub)
        return [_with(spec, sub, inner, rest, value, key=key), *items[1:]]
    obj = dict(doc) if isinstance(doc, dict) else {}
    sub = s.get("properties", {}).get(step) or s.get("additionalProperties") or {}
    if key and not rest:
        obj[value] = _example(spec, sub)
        return obj
    obj[step] = _with(spec, sub, obj.get(step, _example(spec, sub)), rest, value, key=key)
    return obj


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "n1", path)


def cases(spec: Mapping[str, Any]) -> list[Case]:
    """Every hostile body for every JSON request body in ``spec`` (an ``openapi()`` dict)."""
    out: list[Case] = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
            if method not in ("post", "put", "patch") or body is None:
                continue
            schema = body["schema"]
            base = _example(spec, schema)
            name = f"{method.upper()} {path}"
            for t, raw in TOKENS.items():
                out.append(Case(method, _url(path), raw.encode(), f"{name} body = {t}"))
            for leaf, is_key in _leaves(spec, schema):
                doc = _with(spec, schema, base, leaf, _MARK, key=is_key)
                text = json.dumps(doc)
                where = ".".join(str(p) for p in leaf) + (" (key)" if is_key else "")
                for t, raw in TOKENS.items():
                    if is_key and not raw.startswith('"'):
                        continue  # a key is a string
                    hostile = text.replace(json.dumps(_MARK), raw)
                    out.append(Case(method, _url(path), hostile.encode(), f"{name} {where} = {t}"))
    return out


# Numbers Python's float() reads and RFC 8259 has not, as a query parameter's text.
NUMBER_TOKENS = ("NaN", "nan", "Infinity", "-inf", "1e999")


def param_cases(spec: Mapping[str, Any]) -> list[Case]:
    """Every numeric query parameter of every operation, set to each of ``NUMBER_TOKENS``."""
    out: list[Case] = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", ()):
                s = _resolve(spec, param.get("schema", {}))
                if param.get("in") != "query" or s.get("type") not in ("integer", "number"):
                    continue
                for t in NUMBER_TOKENS:
                    url = f"{_url(path)}?{param['name']}={t}"
                    out.append(Case(method, url, b"", f"{method.upper()} {url}"))
    return out


def check_refusal(case: Case, status: int, text: str, *, limit: int = 2048) -> None:
    """A 4xx in the error shape ``{error, check, detail}``, bounded, echoing nothing."""
    assert 400 <= status < 500, (case.where, status, text[:300])
    assert len(text) < limit, (case.where, len(text))
    doc = json.loads(text)
    assert isinstance(doc, dict) and set(doc) == {"error", "check", "detail"}, (case.where, doc)
    assert isinstance(doc["detail"], str) and doc["detail"].isascii(), (case.where, doc)
    for echo in ECHOES:
        assert echo not in text, (case.where, echo, text[:300])
