"""Runnable command examples in Markdown: find them, run them, compare what they print.

An example is a fenced ``console`` block directly after a marker line that renders invisibly
on GitHub::

    <!-- doctest: swtpm -->
    ```console
    $ attest verify $NODE --tofu
    ...
    $ echo $?
    10
    ```

The marker's kind is ``swtpm`` (the example talks to a demo node: swtpm + attestd-tpm +
attestd; ``tests/swtpm/test_doc_examples.py`` provides it) or ``unit`` (needs no node); a
``needs=prog,prog`` after it names programs the example runs besides attest and the usual
shell tools (skipped with the reason when missing, failed under CI, as the tiers are).

Inside the block a line starting with ``$ `` is a command (a line ending in ``\\`` continues it
on the next line); the lines after it, up to the next command, are what it prints (stdout and
stderr together). The match is strict -- line by line, trailing blanks ignored -- except for:

- a line ``...`` (or ``…``): any number of lines, none included;
- ``<hex>``: hex digits; ``<n>``: a number (``-12``, ``4.2``); ``<time>``: an ISO 8601 time
  (``2026-06-01T12:00:00.123+00:00``, ``Z``); ``<any>``: any text within the line;
- the values of the example's variables (``$NODE``, ...) are written as ``$NAME`` in the
  output, as they are in the commands.

The commands of one example run in one ``bash``, in order, so ``$?`` is the previous command's
status (a pipeline's: its last command's, as in the reader's shell): a command that exits
non-zero fails the example unless the next command reads ``$?`` (``echo $?`` shows the code in
the doc). The examples of one file run in
one working directory, in document order: an example may use the files an earlier one wrote.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS = ("unit", "swtpm")
MARKER = re.compile(r"^<!--\s*doctest:\s*(?P<kind>\S+)(?:\s+needs=(?P<needs>\S+))?\s*-->\s*$")
FENCE_OPEN = "```console"
FENCE = "```"
PROMPT = "$ "
WILDCARD_LINES = ("...", "…")
PLACEHOLDERS = {
    "<hex>": r"[0-9a-fA-F]+",
    "<n>": r"-?[0-9]+(?:\.[0-9]+)?",
    "<time>": r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?",
    "<any>": r".*?",
}
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


class DocExampleError(Exception):
    """A marked block that is not a well-formed example (the test fails on it)."""


@dataclass(frozen=True)
class Step:
    """One command and the lines it is shown to print."""

    command: str
    expected: tuple[str, ...]
    line: int  # of the command's ``$ `` line in the file


@dataclass(frozen=True)
class Example:
    path: Path  # the Markdown file
    line: int  # of the marker
    kind: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()  # programs besides attest's own (``needs=veritysetup,jq``)

    def id(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def extract(path: Path) -> list[Example]:
    """The marked examples of one Markdown file, in document order. A marker not followed by
    a ``console`` block, an unknown kind, output before the first command, an empty or
    unclosed block: ``DocExampleError`` naming the line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        if m is None:
            i += 1
            continue
        where = f"{path}:{i + 1}"
        if m["kind"] not in KINDS:
            raise DocExampleError(f"{where}: unknown doctest kind {m['kind']!r} (one of {KINDS})")
        if i + 1 >= len(lines) or lines[i + 1].strip() != FENCE_OPEN:
            raise DocExampleError(f"{where}: the marker must be followed by a ```console block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == FENCE), None)
        if end is None:
            raise DocExampleError(f"{where}: the ```console block is not closed")
        steps = _steps(lines[i + 2 : end], first=i + 3, where=where)
        needs = tuple(m["needs"].split(",")) if m["needs"] else ()
        out.append(Example(path, i + 1, m["kind"], tuple(steps), needs))
        i = end + 1
    return out


def _steps(block: Sequence[str], *, first: int, where: str) -> list[Step]:
    steps: list[Step] = []
    command: list[str] = []
    expected: list[str] = []
    line = 0
    k = 0
    while k < len(block):
        text = block[k]
        if text.startswith(PROMPT) or text == PROMPT.strip():
            if command:
                steps.append(Step("\n".join(command), tuple(expected), line))
            line, command, expected = first + k, [text[len(PROMPT) :]], []
            while command[-1].endswith("\\") and k + 1 < len(block):
                k += 1
                command.append(block[k])
        elif not command:
            raise DocExampleError(f"{where}: output before the first command: {text!r}")
        else:
            expected.append(text)
        k += 1
    if not command:
        raise DocExampleError(f"{where}: no command in the block")
    steps.append(Step("\n".join(command), tuple(expected), line))
    return steps


def _line_pattern(expected: str) -> str:
    parts = []
    pos = 0
    for m in _PLACEHOLDER.finditer(expected):
        parts.append(re.escape(expected[pos : m.start()]))
        parts.append(PLACEHOLDERS[m.group()])
        pos = m.end()
    parts.append(re.escape(expected[pos:]))
    return "".join(parts)


def _clean(lines: Iterable[str]) -> list[str]:
    out = [line.rstrip() for line in lines]
    while out and not out[-1]:
        out.pop()
    return out


def matches(expected: Sequence[str], actual: Sequence[str]) -> bool:
    """Whether ``actual`` lines are ``expected`` (placeholders and ``...`` lines applied)."""
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line.strip() in WILDCARD_LINES else _line_pattern(line) + r"\n"
        for line in _clean(expected)
    )
    text = "".join(line + "\n" for line in _clean(actual))
    return re.fullmatch(pattern, text) is not None


def diff(expected: Sequence[str], actual: Sequence[str]) -> str:
    """A unified diff, expected -> actual, in which an actual line that matches an expected
    line (the next one that does, in order) is shown as that expected line, placeholders and
    all, so that only what differs stands out."""
    exp, act = _clean(expected), _clean(actual)
    shown = []
    j = 0
    for line in act:
        k = next(
            (
                k
                for k in range(j, len(exp))
                if exp[k].strip() not in WILDCARD_LINES
                and re.fullmatch(_line_pattern(exp[k]), line)
            ),
            None,
        )
        if k is None:
            shown.append(line)
        else:
            shown.append(exp[k])
            j = k + 1
    return "\n".join(
        difflib.unified_diff(exp, shown, "shown in the doc", "printed", lineterm="", n=2)
    )


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with each variable's value written as ``$NAME`` (longest values first, so a
    value that contains another is replaced whole)."""
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[1])):
        if value:
            text = text.replace(value, f"${name}")
    return text


@dataclass(frozen=True)
class Ran:
    step: Step
    output: tuple[str, ...]
    status: int


_END = "@@doctest-end-of-step@@"


def run(
    example: Example,
    *,
    cwd: Path,
    env: Mapping[str, str],
    variables: Mapping[str, str],
    timeout: float = 120.0,
) -> list[Ran]:
    """Run the example's commands in one ``bash`` in ``cwd`` (``env``: the whole
    environment; ``variables``: the ones the doc names, exported and substituted back)."""
    script = []
    for step in example.steps:
        script.append(step.command)
        script.append(f'__rc=$?; printf "\\n{_END} %d\\n" "$__rc"; (exit $__rc)')
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "\n".join(script)],
        cwd=cwd,
        env={**env, **variables},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    text = substitute(proc.stdout.decode("utf-8", errors="replace"), variables)
    chunks = re.split(rf"\n{re.escape(_END)} (-?\d+)\n", text)
    out = []
    finished = list(zip(chunks[::2], chunks[1::2], strict=False))  # [(output, status), ...]
    for step, (chunk, status) in zip(example.steps, finished, strict=False):
        out.append(Ran(step, tuple(chunk.splitlines()), int(status)))
    if len(out) < len(example.steps):  # bash itself stopped (a syntax error, exit)
        step = example.steps[len(out)]
        out.append(Ran(step, tuple(chunks[-1].splitlines()), proc.returncode or 1))
    return out


def check(example: Example, results: Sequence[Ran]) -> list[str]:
    """What does not hold, one message per command (empty: the example is right)."""
    problems = []
    for i, r in enumerate(results):
        where = f"{example.path.name}:{r.step.line}: $ {r.step.command}"
        if not matches(r.step.expected, r.output):
            problems.append(f"{where}\n{diff(r.step.expected, r.output)}")
        following = example.steps[i + 1].command if i + 1 < len(example.steps) else ""
        if r.status != 0 and "$?" not in following:
            problems.append(
                f"{where}\nexited {r.status} (show it with a following `$ echo $?`); it printed:\n"
                + "\n".join(r.output)
            )
    if len(results) < len(example.steps):
        problems.append(
            f"{example.path.name}:{example.line}: bash stopped before every command ran"
        )
    return problems


def example_env(base: Mapping[str, str], *, bindir: Path, src: Path, home: Path) -> dict[str, str]:
    """The environment the commands run in: the venv's ``attest`` first on ``PATH``, this
    repository's ``src`` first on ``PYTHONPATH``, a private ``HOME``, no ``ATTEST_*``
    variables from the caller, fixed locale, time zone and terminal width."""
    env = {k: v for k, v in base.items() if not k.startswith("ATTEST_")}
    env["PATH"] = os.pathsep.join([str(bindir), base.get("PATH", "/usr/bin:/bin")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), base.get("PYTHONPATH", "")) if p)
    env.update(HOME=str(home), LC_ALL="C.UTF-8", TZ="UTC", COLUMNS="80", NO_COLOR="1")
    return env
