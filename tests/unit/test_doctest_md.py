"""The doc-example runner (tests/support/doctest_md.py): what it extracts from Markdown, how it
matches output (placeholders, ``...``), and how it reports a mismatch and an unshown exit
status. The examples themselves run in tests/swtpm/test_doc_examples.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from tests.support.doctest_md import (
    DocExampleError,
    check,
    diff,
    example_env,
    extract,
    matches,
    run,
    substitute,
)

DOC = """# A doc

```console
$ not marked: never run
```

<!-- doctest: unit -->
```console
$ echo one
one
$ printf 'a\\nb\\n' \\
    | cat
a
b
```

Text.

<!-- doctest: swtpm needs=jq,curl -->
```console
$ attest verify $NODE
...
$ echo $?
10
```
"""


def _doc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_extracts_marked_console_blocks_only(tmp_path: Path) -> None:
    first, second = extract(_doc(tmp_path, DOC))
    assert (first.line, first.kind, first.needs) == (7, "unit", ())
    assert [s.command for s in first.steps] == ["echo one", "printf 'a\\nb\\n' \\\n    | cat"]
    assert [s.expected for s in first.steps] == [("one",), ("a", "b")]
    assert [s.line for s in first.steps] == [9, 11]
    assert (second.kind, second.needs) == ("swtpm", ("jq", "curl"))
    assert [s.expected for s in second.steps] == [("...",), ("10",)]
    assert first.id(tmp_path) == "doc.md:7"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("<!-- doctest: vm -->\n```console\n$ x\n```\n", "unknown doctest kind 'vm'"),
        ("<!-- doctest: unit -->\n\n```console\n$ x\n```\n", "the marker must be followed by"),
        ("<!-- doctest: unit -->\n```sh\nx\n```\n", "the marker must be followed by"),
        ("<!-- doctest: unit -->\n```console\noutput\n$ x\n```\n", "output before the first"),
        ("<!-- doctest: unit -->\n```console\n```\n", "no command in the block"),
        ("<!-- doctest: unit -->\n```console\n$ x\n", "the ```console block is not closed"),
    ],
)
def test_refuses_a_malformed_marked_block(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(DocExampleError, match=re.escape(f"doc.md:1: {says}")):
        extract(_doc(tmp_path, text))


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (["root hash <hex>"], ["root hash 90fc4cb87aa4c07b"]),
        (["up <n> s, clock <n> ms"], ["up 4.2 s, clock -12 ms"]),
        (["enrolled <time>"], ["enrolled 2026-12-07T00:34:38.123456+00:00"]),
        (["blessed <time>"], ["blessed 2026-12-07T00:34:38Z"]),
        (["EAR <any>."], ["EAR eyJhbGciOi.x.y."]),
        (["first", "...", "last"], ["first", "a", "b", "last"]),
        (["first", "...", "last"], ["first", "last"]),
        (["…", "last"], ["x", "last"]),
        (["a  "], ["a", "", ""]),  # trailing blanks and blank last lines are not compared
        (["(1+1) [x] $y"], ["(1+1) [x] $y"]),  # regex characters are literal
    ],
)
def test_placeholders_and_wildcards_match(expected: list[str], actual: list[str]) -> None:
    assert matches(expected, actual)


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (["root hash <hex>"], ["root hash 90fc-4c"]),
        (["<n> ms"], ["fast ms"]),
        (["<time>"], ["yesterday"]),
        (["<any>"], ["one", "two"]),  # within one line only
        (["a"], ["a", "b"]),  # an extra line
        (["a", "b"], ["a"]),  # a missing line
        (["first", "...", "last"], ["first", "a"]),
        (["a"], ["A"]),
        (["  indented"], ["indented"]),  # leading blanks count
    ],
)
def test_anything_else_is_a_mismatch(expected: list[str], actual: list[str]) -> None:
    assert not matches(expected, actual)


def test_a_mismatch_is_reported_as_a_diff_of_what_differs() -> None:
    expected = ["release 1.0.0 <hex>", "appraised in <n> ms", "record 4", "mission ok"]
    actual = ["release 1.0.0 7164ac1d", "appraised in 36 ms", "record 5", "mission ok"]
    assert diff(expected, actual).splitlines() == [
        "--- shown in the doc",
        "+++ printed",
        "@@ -1,4 +1,4 @@",
        " release 1.0.0 <hex>",
        " appraised in <n> ms",
        "-record 4",
        "+record 5",
        " mission ok",
    ]


def test_variables_are_written_back_longest_first() -> None:
    got = substitute(
        "node http://127.0.0.1:4711/v1 via /tmp/x/run/api.sock in /tmp/x",
        {"NODE": "http://127.0.0.1:4711", "WORK": "/tmp/x", "SOCK": "/tmp/x/run/api.sock"},
    )
    assert got == "node $NODE/v1 via $SOCK in $WORK"


def _run(tmp_path: Path, text: str) -> list[str]:
    (example,) = extract(_doc(tmp_path, text))
    env = example_env(os.environ, bindir=Path("/usr/bin"), src=tmp_path, home=tmp_path)
    return check(example, run(example, cwd=tmp_path, env=env, variables={"WHO": "world"}))


def test_runs_the_commands_in_one_shell_and_checks_each(tmp_path: Path) -> None:
    text = """<!-- doctest: unit -->
```console
$ cd sub 2>/dev/null || mkdir sub
$ echo "hello $WHO" > greeting; cat greeting
hello $WHO
$ printf 'no newline'
no newline
$ false
$ echo $?
1
```
"""
    assert _run(tmp_path, text) == []
    assert (tmp_path / "greeting").read_text() == "hello world\n"


def test_reports_wrong_output_and_an_exit_status_the_doc_does_not_show(tmp_path: Path) -> None:
    text = """<!-- doctest: unit -->
```console
$ echo two
one
$ sh -c 'echo oops >&2; exit 3'
oops
$ echo done
done
```
"""
    wrong, unshown = _run(tmp_path, text)
    assert wrong.startswith("doc.md:3: $ echo two\n") and "-one\n+two" in wrong
    assert unshown.startswith("doc.md:5: $ sh -c 'echo oops >&2; exit 3'\nexited 3")
    assert unshown.endswith("it printed:\noops")


def test_the_environment_is_the_examples_own(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "ATTEST_VERIFIER_STATE": "/root/x", "LANG": "de_DE.UTF-8"}
    env = example_env(base, bindir=Path("/venv/bin"), src=Path("/repo/src"), home=tmp_path)
    assert env["PATH"] == "/venv/bin:/usr/bin" and env["PYTHONPATH"] == "/repo/src"
    assert "ATTEST_VERIFIER_STATE" not in env and env["HOME"] == str(tmp_path)
    assert (env["LC_ALL"], env["TZ"], env["COLUMNS"]) == ("C.UTF-8", "UTC", "80")
