"""``attest.eventlog`` imports some submodules on first use; its public API is unchanged."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import attest.eventlog

# By module name: the package's ``facts`` and ``replay`` are functions of those names.
SUBMODULES = ("cel", "diff", "facts", "parse", "quirks", "replay")


def test_every_public_name_is_the_submodules_own_object() -> None:
    homes = [importlib.import_module(f"attest.eventlog.{m}") for m in SUBMODULES]
    for name in attest.eventlog.__all__:
        value = getattr(attest.eventlog, name)
        owners = [m for m in homes if getattr(m, name, None) is value]
        assert owners, name
    assert set(attest.eventlog.__all__) <= set(dir(attest.eventlog))


def test_unknown_name_raises_attribute_error() -> None:
    try:
        attest.eventlog.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("attest.eventlog.no_such_name did not raise")


def _python(code: str) -> str:
    """The stdout of ``code`` run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_lazy_names_load_their_module_on_first_use_only() -> None:
    lazy = sorted(f"attest.eventlog.{m}" for m in SUBMODULES)
    code = (
        "import sys\n"
        "import attest.eventlog as e\n"
        f"lazy = set({lazy!r})\n"
        "before = lazy & set(sys.modules)\n"
        "from attest.eventlog import describe, verify_cel, BootFacts\n"
        "print(sorted(before), sorted(lazy & set(sys.modules)), e.describe is describe)\n"
    )
    # BootFacts' module (facts) needs parse, quirks and replay: all six are loaded then
    assert _python(code) == f"[] {lazy} True"


def test_the_runtime_log_loads_no_firmware_log_parsing() -> None:
    """The node's daemons use the CEL runtime log only: importing it (and the verity and
    node-port types on their start path) loads none of parse, quirks, replay, uefi, facts."""
    code = (
        "import sys\n"
        "import attest.eventlog.cel, attest.verity.devices, attest.node.port\n"
        "print(sorted(m for m in sys.modules if m.startswith('attest.eventlog.')))\n"
    )
    assert _python(code) == "['attest.eventlog.cel']"


@pytest.mark.parametrize(
    "first",
    [
        "import attest.appraisal.stages",
        "import attest.eventlog.facts",
        "import attest.eventlog.replay",
        "import attest.eventlog",
    ],
)
@pytest.mark.parametrize("name", ["facts", "replay"])
def test_function_named_as_its_submodule_stays_the_function(first: str, name: str) -> None:
    """The submodules ``facts`` and ``replay`` share their names with functions the package
    exports; the package's attribute stays the function, as when the package imported it
    eagerly, whichever import loaded the submodule first."""
    code = (
        f"{first}\n"
        "import attest.eventlog\n"
        f"from attest.eventlog import {name}\n"
        f"import attest.eventlog.{name}\n"
        f"f = attest.eventlog.{name}\n"
        f"print({name} is f and f.__name__ == {name!r} and callable(f))\n"
    )
    assert _python(code) == "True"
