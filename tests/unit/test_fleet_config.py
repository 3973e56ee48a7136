"""``attest fleet``'s settings from its options and ``ATTEST_FLEET_*`` environment: typed,
read once, an option over its variable, unknown variables and non-boolean booleans refused
with their names."""

from __future__ import annotations

import dataclasses
import os

import pytest

from attest.errors import ConfigError
from attest.verifier.fleet.config import (
    DEFAULT_DB,
    DEFAULT_EAR_KEY,
    FleetSettings,
    load_fleet_settings,
)


@pytest.mark.parametrize(
    ("value", "want"),
    [("on", True), ("1", True), ("TRUE", True), (" yes ", True), ("off", False), ("", False)],
)
def test_tofu_variable_is_a_strict_boolean(value: str, want: bool) -> None:
    assert load_fleet_settings({"ATTEST_FLEET_TOFU": value}).tofu is want


@pytest.mark.parametrize("value", ["enabled", "2", "y", "truee", "of"])
def test_a_word_that_is_no_boolean_is_refused_never_false(value: str) -> None:
    with pytest.raises(ConfigError, match="is not a boolean") as err:
        load_fleet_settings({"ATTEST_FLEET_TOFU": value})
    assert err.value.key == "ATTEST_FLEET_TOFU"


def test_a_bad_variable_is_refused_even_when_its_option_is_given() -> None:
    with pytest.raises(ConfigError) as err:
        load_fleet_settings({"ATTEST_FLEET_TOFU": "enabled"}, tofu=True)
    assert err.value.key == "ATTEST_FLEET_TOFU"


def test_unknown_fleet_variable_is_refused_with_its_name() -> None:
    with pytest.raises(ConfigError, match="unknown environment variable") as err:
        load_fleet_settings({"ATTEST_FLEET_TOFUU": "1", "ATTEST_VERIFIER_STATE": "/x"})
    assert err.value.key == "ATTEST_FLEET_TOFUU"


def test_defaults_without_options_or_variables() -> None:
    assert load_fleet_settings({"ATTEST_API_PORT": "1", "PATH": "/bin"}) == FleetSettings(
        db=DEFAULT_DB, ek_roots=(), tofu=False, ear_key=DEFAULT_EAR_KEY
    )


def test_variables_fill_what_the_options_leave_and_options_win() -> None:
    env = {
        "ATTEST_FLEET_DB": "postgresql://fleet",
        "ATTEST_FLEET_EK_ROOTS": os.pathsep.join(["/ca/a.pem", "", "/ca/dir"]),
        "ATTEST_FLEET_EAR_KEY": "/keys/ear.pem",
    }
    s = load_fleet_settings(env)
    assert (s.db, s.ek_roots, s.ear_key) == (
        "postgresql://fleet",
        ("/ca/a.pem", "/ca/dir"),
        "/keys/ear.pem",
    )
    s = load_fleet_settings(env, db="sqlite:///x.db", ek_roots=["/mine.pem"], ear_key="k.pem")
    assert (s.db, s.ek_roots, s.ear_key) == ("sqlite:///x.db", ("/mine.pem",), "k.pem")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_fleet_settings({}).tofu = True  # type: ignore[misc]
