"""The one error shape in an OpenAPI document: every operation declares its error answers
(4xx, 5xx and ``default``) with the ``Error`` schema ``{error, check, detail}``, and a real
error answer validates against that schema."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

ERROR_REF = "#/components/schemas/Error"
ERROR_CONTENT = {"application/json": {"schema": {"$ref": ERROR_REF}}}
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def operations(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``("POST /v1/evidence", operation)`` for every operation of the document."""
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def error_statuses(op: Mapping[str, Any]) -> set[str]:
    """The operation's documented error answers: 4xx, 5xx (ranges included) and default."""
    return {k for k in op["responses"] if k == "default" or k[:1] in ("4", "5")}


def _checked(param: Mapping[str, Any]) -> bool:
    """Whether a parameter can break the schema (a plain string in the path cannot)."""
    schema = param.get("schema", {})
    plain = schema.get("type") == "string" and not set(schema) - {"type", "title"}
    return param.get("in") != "path" or not plain


def problems(spec: Mapping[str, Any], *, always: Iterable[int] = ()) -> list[str]:
    """Every way the document breaks the rule, one line each (empty: it keeps it)."""
    out = []
    schemas = spec.get("components", {}).get("schemas", {})
    error = schemas.get("Error")
    if error is None:
        return ["no components.schemas.Error"]
    if set(error.get("properties", {})) != {"error", "check", "detail"}:
        out.append(f"Error's properties are {sorted(error.get('properties', {}))}")
    if not {"error", "check", "detail"} <= set(error.get("required", ())):
        out.append(f"Error requires only {error.get('required')}")
    out += [
        f"components.schemas.{n} (FastAPI's own error shape)" for n in schemas if "Validation" in n
    ]
    for name, op in operations(spec):
        statuses = error_statuses(op)
        if "default" not in statuses:
            out.append(f"{name}: no default response")
        out += [
            f"{name}: {s} not documented" for s in sorted(map(str, always)) if s not in statuses
        ]
        if (op.get("requestBody") or any(map(_checked, op.get("parameters", ())))) and (
            "422" not in statuses
        ):
            out.append(f"{name}: takes input but documents no 422")
        for s in sorted(statuses):
            content = op["responses"][s].get("content")
            if content != ERROR_CONTENT:
                out.append(f"{name}: {s} answers {content}, not the Error schema")
            if not op["responses"][s].get("description"):
                out.append(f"{name}: {s} has no description")
    return out


_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "null": type(None),
    "object": dict,
    "integer": int,
    "boolean": bool,
}


def schema_errors(value: Any, schema: Mapping[str, Any], where: str = "body") -> list[str]:
    """``value`` against the JSON Schema subset FastAPI writes for a flat model (``type``,
    ``anyOf``, ``properties``, ``required``): what does not match (the test support carries
    no JSON Schema library)."""
    if "anyOf" in schema:
        if any(not schema_errors(value, alt, where) for alt in schema["anyOf"]):
            return []
        return [f"{where}: {value!r} matches none of {schema['anyOf']}"]
    kind = schema.get("type")
    if kind is not None and not isinstance(value, _TYPES[kind]):
        return [f"{where}: {value!r} is not {kind}"]
    out = [f"{where}.{k}: missing" for k in schema.get("required", ()) if k not in value]
    for k, sub in schema.get("properties", {}).items():
        if isinstance(value, dict) and k in value:
            out += schema_errors(value[k], sub, f"{where}.{k}")
    return out


def assert_error_answer(
    spec: Mapping[str, Any], method: str, path: str, status: int, body: Any, *, template: str = ""
) -> None:
    """``body`` (an answer with ``status``) is an ``Error`` whose detail is at most 300
    printable ASCII characters, and the operation documents the status (a 5xx: at least as
    its ``default``). ``template``: the operation's path template when ``path`` has
    parameters; a path no operation has checks the shape alone."""
    assert schema_errors(body, spec["components"]["schemas"]["Error"]) == [], body
    assert len(body["detail"]) <= 300 and all(" " <= c <= "~" for c in body["detail"]), body
    op = spec["paths"].get(template or path, {}).get(method.lower())
    if op is not None:
        documented = set(op["responses"])
        assert str(status) in documented or (status >= 500 and "default" in documented), (
            f"{method} {template or path} answered {status}, documents {sorted(documented)}"
        )
