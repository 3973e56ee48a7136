"""attest._lazy: a package's attributes loaded from its submodules on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout


def test_first_access_imports_the_submodule_and_binds_the_value() -> None:
    out = _run(
        "import sys, attest.manifest as m\n"
        "print('attest.manifest.evaluate' in sys.modules)\n"
        "f = m.evaluate_release\n"
        "print('attest.manifest.evaluate' in sys.modules, vars(m)['evaluate_release'] is f)\n"
        "from attest.manifest.evaluate import evaluate_release\n"
        "print(f is evaluate_release)\n"
    )
    assert out.split() == ["False", "True", "True", "True"]


def test_unknown_names_are_attribute_errors_and_dir_lists_the_public_names() -> None:
    import attest.eventlog
    import attest.manifest

    with pytest.raises(AttributeError, match="'attest.manifest' has no attribute 'nope'"):
        attest.manifest.nope  # noqa: B018
    with pytest.raises(AttributeError, match="'attest.eventlog' has no attribute 'nope'"):
        attest.eventlog.nope  # noqa: B018
    assert set(attest.manifest.__all__) <= set(dir(attest.manifest))
    assert set(attest.eventlog.__all__) <= set(dir(attest.eventlog))


def test_eventlog_replay_stays_the_function_after_its_module_loads() -> None:
    out = _run(
        "import attest.eventlog as e, attest.eventlog.replay, attest.eventlog.facts\n"
        "print(callable(e.replay), type(e.replay).__name__, type(e.facts).__name__)\n"
    )
    assert out.split() == ["True", "function", "function"]
