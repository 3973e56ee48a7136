"""attestd's settings: what is read, and what is refused with its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from attest.errors import ConfigError
from attest.node.config import config_path, load_settings


def test_unknown_attest_variable_is_refused_like_an_unknown_toml_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={"ATTEST_API_PROT": "7443"})
    assert err.value.key == "ATTEST_API_PROT"


def test_other_programs_variables_are_left_alone() -> None:
    env = {"ATTEST_FLEET_TOFU": "on", "ATTEST_VERIFIER_STATE": "/x", "ATTEST_VM_ACCEL": "tcg"}
    assert load_settings(None, environ={**env, "ATTEST_API_PORT": "7443"}).api.port == 7443


def test_config_path_prefers_flag_then_environment(tmp_path: Path) -> None:
    assert config_path("/a.toml", {"ATTEST_CONFIG": "/b.toml"}) == "/a.toml"
    assert config_path(None, {"ATTEST_CONFIG": "/b.toml"}) == "/b.toml"


def test_default_file_is_read_only_when_it_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "attestd.toml"
    monkeypatch.setattr("attest.node.config.DEFAULT_CONFIG", str(cfg))
    assert config_path(None, {}) is None
    cfg.write_text("[api]\nport = 7444\n")
    assert config_path(None, {}) == str(cfg)
    assert load_settings(config_path(None, {}), environ={}).api.port == 7444


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xfe node_id = 'n'\n", "is not valid TOML: 'utf-8' codec"),
        (b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "is not valid TOML: maximum recursion"),
        (b"node_id = " + b"9" * 10_000 + b"\n", "is not valid TOML: Exceeds the limit"),
        (b"#" * (2 << 20), "is larger than 1048576 bytes"),
    ],
    ids=["not-utf8", "deep-nesting", "huge-integer", "oversized"],
)
def test_a_hostile_file_is_a_config_error_naming_it(
    tmp_path: Path, content: bytes, says: str
) -> None:
    """Never a UnicodeDecodeError, RecursionError or int-digits ValueError (exit 70 in
    ``attest manifest config-digest``), nor an unbounded read."""
    path = tmp_path / "attestd.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=says) as err:
        load_settings(path, environ={})
    assert err.value.key == "config"


def test_dev_zero_is_refused_not_read_without_end() -> None:
    with pytest.raises(ConfigError, match="is larger than"):
        load_settings("/dev/zero", environ={})
