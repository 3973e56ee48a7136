"""The layout's promises that import-linter does not check."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import pkgutil

import attest
from attest.errors import AttestError


def _all_modules() -> list[str]:
    found = pkgutil.walk_packages(attest.__path__, "attest.")
    return [m.name for m in found if not m.name.endswith("__main__")]  # those run a program


def test_every_attest_error_lives_in_errors_py() -> None:
    outside = []
    for name in _all_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, AttestError)
                and obj.__module__ == name
                and name != "attest.errors"
            ):
                outside.append(f"{name}.{obj.__name__}")
    assert outside == []


def test_py_typed_ships() -> None:
    assert (importlib.resources.files("attest") / "py.typed").is_file()
