"""The committed TEST trust root, example registry and JSON schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attest.manifest.evaluate import ReleaseStatus, evaluate_release, evaluate_rollback
from attest.manifest.parse import load_registry, load_root
from attest.manifest.trusted import TrustedState
from attest.verity.hashtree import verity_root_hash

REPO = Path(__file__).resolve().parents[3]
FM = REPO / "firmware_manifests"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _load_regenerate() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("regenerate", FM / "test" / "regenerate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _state() -> TrustedState:
    return TrustedState.bootstrap((FM / "test/root.json").read_bytes(), now=NOW).update_registry(
        (FM / "test/registry.json").read_bytes(), now=NOW
    )


def test_committed_test_documents_verify() -> None:
    reg = _state().check_fresh(now=NOW)
    assert reg.snapshot.expires.year >= 2036
    assert set(reg.snapshot.releases) == {"0.1.0", "0.2.0", "0.2.1", "0.3.0"}


def test_committed_test_registry_expires_at_explicit_now() -> None:
    from attest.errors import ExpiredError

    with pytest.raises(ExpiredError):
        _state().check_fresh(now=datetime(2036, 1, 1, tzinfo=UTC))


def test_example_releases_match_their_images() -> None:
    mod = _load_regenerate()
    reg = _state().check_fresh(now=NOW)
    import hashlib

    for version, blocks in mod.EXAMPLES:
        rel = reg.snapshot.releases[version]
        image = mod.example_image(version, blocks)
        assert rel.artifact_sha256 == hashlib.sha256(image).digest()
        assert rel.verity.root_hash == verity_root_hash(image, salt=rel.verity.salt)
        status = evaluate_release(
            reg, artifact_sha256=rel.artifact_sha256, verity_root_hash=rel.verity.root_hash, now=NOW
        ).status
        assert status is (ReleaseStatus.REVOKED if version == "0.2.0" else ReleaseStatus.BLESSED)
    assert evaluate_rollback(reg, from_version="0.2.1", to_version="0.1.0").allowed


def test_test_keys_are_marked_test_only() -> None:
    pems = sorted((FM / "test/keys").glob("*.pem"))
    assert len(pems) == 8
    for p in pems:
        assert p.name.startswith("TEST-ONLY-")
        assert p.read_text().startswith("# TEST-ONLY KEY")


def test_example_platform_is_marked_example() -> None:
    reg = _state().check_fresh(now=NOW)
    assert all(p.reference.example for p in reg.snapshot.platforms.values())


SCHEMAS = ["root", "registry", "platform", "key"]


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_well_formed(name: str) -> None:
    schema = json.loads((FM / "schema" / f"{name}.schema.json").read_text())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["$id"].endswith(f"{name}.schema.json")


def _required_paths(schema: dict[str, Any], defs: dict[str, Any], doc: Any) -> list[str]:
    """Walk the document along the schema; return members the schema requires but the doc
    lacks, and members the doc has that a closed schema does not allow."""
    problems: list[str] = []
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    if isinstance(doc, dict) and schema.get("type") == "object":
        for r in schema.get("required", []):
            if r not in doc:
                problems.append(f"missing {r}")
        props = schema.get("properties", {})
        for k, v in doc.items():
            if k in props:
                problems += _required_paths(props[k], defs, v)
            elif "additionalProperties" in schema:
                ap = schema["additionalProperties"]
                if ap is False:
                    problems.append(f"unexpected {k}")
                elif isinstance(ap, dict):
                    problems += _required_paths(ap, defs, v)
    elif isinstance(doc, list) and "items" in schema:
        for v in doc:
            problems += _required_paths(schema["items"], defs, v)
    elif "oneOf" in schema and doc is not None:
        options = [o for o in schema["oneOf"] if o.get("type") != "null"]
        problems += _required_paths(options[0], defs, doc) if options else []
    return problems


@pytest.mark.parametrize(
    ("schema", "doc"), [("root", "test/root.json"), ("registry", "test/registry.json")]
)
def test_schema_and_parser_agree_on_example_documents(schema: str, doc: str) -> None:
    data = (FM / doc).read_bytes()
    (load_root if schema == "root" else load_registry)(data)  # the parser accepts it
    s = json.loads((FM / "schema" / f"{schema}.schema.json").read_text())
    assert _required_paths(s, s.get("$defs", {}), json.loads(data)) == []


def test_schema_required_fields_match_parser() -> None:
    """Dropping any member the schema marks required makes the parser refuse the document."""
    from attest.errors import ManifestFormatError
    from attest.manifest.canonical import canonicalize

    s = json.loads((FM / "schema" / "registry.schema.json").read_text())
    signed_schema = s["$defs"]["registry_signed"]
    base = json.loads((FM / "test/registry.json").read_bytes())
    for member in signed_schema["required"]:
        doc = json.loads(json.dumps(base))
        del doc["signed"][member]
        with pytest.raises(ManifestFormatError):
            load_registry(canonicalize(doc))
    release_schema = s["$defs"]["release"]
    for member in release_schema["required"]:
        doc = json.loads(json.dumps(base))
        del doc["signed"]["releases"]["0.1.0"][member]
        with pytest.raises(ManifestFormatError):
            load_registry(canonicalize(doc))
