"""The layout's promises that import-linter does not check."""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import inspect
import pkgutil
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[2]


def _is_test_module(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].startswith("test_")


def _imported_modules(source: str, path: Path) -> list[str]:
    """Every module the file at ``path`` imports, by dotted name: relative imports resolved,
    and for ``from X import Y`` both X and X.Y (Y may be a module)."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    found: list[str] = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = [*package[: len(package) - node.level + 1]] if node.level else []
            base = ".".join([*parts, *([node.module] if node.module else [])])
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def test_no_test_module_imports_another() -> None:
    """Helpers shared by tests live in tests/support/ (or in a tier's conftest.py): a test
    module imported by another hides a helper among tests and drags its fixtures along."""
    offenders = []
    for root in ("tests", "bench"):
        for path in sorted((REPO / root).rglob("*.py")):
            for name in _imported_modules(path.read_text(), path):
                if _is_test_module(name):
                    offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert offenders == []


def test_import_check_sees_every_spelling_of_a_test_import() -> None:
    source = (
        "import tests.fleet.test_poller\n"
        "from tests.fleet.test_poller import settings\n"
        "from tests.fleet import test_poller\n"
        "from .test_pair import x\n"
        "from . import test_quote\n"
        "from ..fleet.test_store import y\n"
        "from tests.support.poller import settings\n"
        "import tests.fleet.conftest\n"
    )
    names = _imported_modules(source, REPO / "tests" / "unit" / "probe.py")
    assert sorted({n for n in names if _is_test_module(n)}) == [
        "tests.fleet.test_poller",
        "tests.fleet.test_store",
        "tests.unit.test_pair",
        "tests.unit.test_quote",
    ]


EVIDENCE_MEMBERS = frozenset(
    {"firmware_log", "runtime_log", "ak", "ek", "node_id", "image", "boot", "quote", "pcrs"}
)


def _names_a_doc(node: ast.expr) -> bool:
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return "doc" in name.lower()


def _evidence_member_reads(source: str, filename: str = "<snippet>") -> list[str]:
    """``doc.get("ak")`` / ``doc["ak"]`` (read, not written) on a variable named like
    ``*doc*``, for the evidence document's member names: ``file:line member``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and _names_a_doc(node.func.value)
            and node.args
        ):
            key: ast.expr = node.args[0]
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _names_a_doc(node.value)
        ):
            key = node.slice
        else:
            continue
        if isinstance(key, ast.Constant) and key.value in EVIDENCE_MEMBERS:
            found.append((node.lineno, key.value))
    return [f"{filename}:{line} {member}" for line, member in sorted(found)]


def test_only_evidence_py_reads_the_evidence_documents_members() -> None:
    """The evidence document is encoded and parsed in one module (attest.evidence): the
    appraisal and the verifier wing read its members through that module's functions."""
    src = REPO / "src" / "attest"
    offenders = []
    for root in (src / "appraisal", src / "verifier"):
        for path in sorted(root.rglob("*.py")):
            offenders += _evidence_member_reads(path.read_text(), str(path.relative_to(REPO)))
    assert offenders == []


def test_member_read_check_sees_gets_and_subscripts_on_docs() -> None:
    source = (
        'fw = evidence_doc.get("firmware_log")\n'
        'ak = doc["ak"]["public"]\n'
        'v = self.doc.get("image", {})\n'
        'doc["node_id"] = "written, not read"\n'
        'x = settings.get("ak")\n'
        'y = doc.get("verity")\n'
    )
    assert _evidence_member_reads(source) == [
        "<snippet>:1 firmware_log",
        "<snippet>:2 ak",
        "<snippet>:3 image",
    ]
