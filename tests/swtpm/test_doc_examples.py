"""The docs say what the code does: every runnable example of README.md and docs/*.md is run
and what it prints is compared with what the doc shows.

An example is a ```` ```console ```` block right after ``<!-- doctest: swtpm -->`` (it needs
swtpm: it talks to a demo node, or runs ``attest demo``) or ``<!-- doctest: unit -->`` (it
needs neither); the format, placeholders and
wildcards are in ``tests/support/doctest_md.py``. One test per example, named
``FILE:LINE`` of its marker. The examples of a file run in document order in one fresh
working directory (an example may use what an earlier one wrote; selecting one with ``-k``
runs its predecessors first, unchecked), with the venv's ``attest`` and this checkout's
sources, a private ``HOME`` and no ``ATTEST_*`` variables of the caller.

Variables (exported to the commands; their values are written back as ``$NAME`` in what the
commands print):

- ``$REPO``: the repository's root, ``$SHARED``: the shared corpus beside it (every example);
- ``swtpm`` examples (swtpm installed), one demo node per file, started for the file's first
  example that names one of these variables -- started as ``attest demo`` starts it
  (``attest.cli.demo.demo_node``: a swtpm with EK certificates from a private CA,
  ``attestd-tpm`` with the upgrade gate on under the TEST root, ``attestd``; node id
  ``demo-node``):

  - ``$NODE``: its API, ``http://127.0.0.1:PORT``;
  - ``$API_SOCKET``: attestd's operator socket (``/run/attest/api.sock`` on a node);
  - ``$TPM_SOCKET``: attestd-tpm's socket (``/run/attest/tpm.sock``);
  - ``$TPM_OPERATOR_SOCKET``: attestd-tpm's operator socket (``/run/attest/tpm-operator.sock``);
  - ``$EK_CA``: a directory holding the swtpm's EK CA certificates (root and intermediate);
  - ``$SPOOL_DIR``: the upgrade gate's spool directory (attestd-tpm's ``--spool-dir``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import REPO, SHARED, need_binaries
from tests.support.doctest_md import Example, Ran, check, example_env, extract, run

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NODE_VARIABLES = ("NODE", "API_SOCKET", "TPM_SOCKET", "TPM_OPERATOR_SOCKET", "EK_CA", "SPOOL_DIR")
VARIABLE = re.compile(r"\$\{?([A-Z_]+)")
EXAMPLES = [e for path in DOCS for e in extract(path)]


class _Files:
    """Where the examples of the file being run stand: its working directory, its node, how
    many of its examples ran."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self.tmp = tmp
        self.path: Path | None = None
        self.done = 0
        self.work = Path()
        self.node: contextlib.ExitStack | None = None
        self.variables: dict[str, str] = {}

    def run(self, example: Example, request: pytest.FixtureRequest) -> list[str]:
        mine = [e for e in EXAMPLES if e.path == example.path]
        index = mine.index(example)
        if self.path != example.path or self.done > index:
            self._reset(example.path)
        for earlier in mine[self.done : index]:
            self._run(earlier, request)  # unchecked: its own test reports it
        return check(example, self._run(example, request))

    def _reset(self, path: Path) -> None:
        self.close()
        self.path, self.done = path, 0
        self.work = self.tmp.mktemp(path.stem)
        (self.work / ".home").mkdir()
        self.variables = {"REPO": str(REPO), "SHARED": str(SHARED)}

    def _run(self, example: Example, request: pytest.FixtureRequest) -> list[Ran]:
        need_binaries(*example.needs)
        if example.kind == "swtpm":
            need_binaries("swtpm", "swtpm_setup", "swtpm_localca")
            uses = {m for step in example.steps for m in VARIABLE.findall(step.command)}
            if self.node is None and uses & set(NODE_VARIABLES):
                self._start_node(request)
        env = example_env(
            os.environ,
            bindir=Path(sys.executable).parent,
            src=REPO / "src",
            home=self.work / ".home",
        )
        results = run(example, cwd=self.work, env=env, variables=self.variables)
        self.done += 1
        return results

    def _start_node(self, request: pytest.FixtureRequest) -> None:
        from attest.cli.demo import demo_node

        template: Path = request.getfixturevalue("swtpm_template")
        node_dir = self.tmp.mktemp(f"{self.work.name}-node")
        shutil.copytree(template, node_dir / "tpm")
        stack = contextlib.ExitStack()
        node = stack.enter_context(demo_node(node_dir, lambda *a: None))
        self.node = stack
        ek_ca = node_dir / "ek-ca"
        ek_ca.mkdir()
        shutil.copy(node.state.root_ca, ek_ca)
        shutil.copy(node.state.intermediate_ca, ek_ca)
        self.variables |= {
            "NODE": node.url,
            "API_SOCKET": str(node.api_socket),
            "TPM_SOCKET": str(node.broker_socket),
            "TPM_OPERATOR_SOCKET": str(node.broker_operator),
            "EK_CA": str(ek_ca),
            "SPOOL_DIR": str(node.spool_dir),
        }
        assert set(NODE_VARIABLES) <= set(self.variables)

    def close(self) -> None:
        if self.node is not None:
            self.node.close()
            self.node = None


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Files]:
    f = _Files(tmp_path_factory)
    yield f
    f.close()


def test_the_docs_have_runnable_examples() -> None:
    """The marked examples are found (a marker mangled by an edit would silently drop them)."""
    assert len(EXAMPLES) >= 10
    assert {"README.md", "verify.md", "manifest.md", "fleet.md"} <= {e.path.name for e in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id(REPO) for e in EXAMPLES])
def test_doc_example(example: Example, files: _Files, request: pytest.FixtureRequest) -> None:
    problems = files.run(example, request)
    assert not problems, "\n\n".join(problems)
