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
    code = (
        "import sys\n"
        "import attest.eventlog as e\n"
        "lazy = {'attest.eventlog.cel', 'attest.eventlog.diff', 'attest.eventlog.facts'}\n"
        "before = lazy & set(sys.modules)\n"
        "from attest.eventlog import describe, verify_cel, BootFacts\n"
        "print(sorted(before), sorted(lazy & set(sys.modules)), e.describe is describe)\n"
    )
    loaded = "['attest.eventlog.cel', 'attest.eventlog.diff', 'attest.eventlog.facts']"
    assert _python(code) == f"[] {loaded} True"


@pytest.mark.parametrize(
    "first",
    ["import attest.appraisal.stages", "import attest.eventlog.facts", "import attest.eventlog"],
)
def test_facts_is_the_function_however_the_submodule_was_loaded(first: str) -> None:
    """The submodule ``facts`` shares its name with the function the package exports; the
    package's attribute stays the function, as when the package imported it eagerly."""
    code = (
        f"{first}\n"
        "import attest.eventlog\n"
        "from attest.eventlog import facts\n"
        "import attest.eventlog.facts\n"
        "print(facts is attest.eventlog.facts and facts.__name__ == 'facts' and callable(facts))\n"
    )
    assert _python(code) == "True"
