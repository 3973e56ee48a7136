"""Pure helpers of the image build: where debootstrap's mirror comes from (the machine's apt
configuration, never a hard-coded host)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vm_harness.image import BuildError, find_mirror, parse_deb822, parse_sources_list

DEB822 = """Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: trixie
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: trixie
"""


def test_deb822_stanzas_give_uri_per_suite_skipping_sources_and_disabled() -> None:
    got = {(s.uri, s.suite) for s in parse_deb822(DEB822)}
    assert ("http://mirror.example/debian", "bookworm") in got
    assert ("http://mirror.example/debian-security", "bookworm-security") in got
    assert not any("src.example" in u or "disabled" in u for u, _ in got)


def test_one_line_sources_skip_options_and_comments() -> None:
    text = (
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert [(s.uri, s.suite) for s in parse_sources_list(text)] == [
        ("http://one.example/debian", "bookworm")
    ]


def test_find_mirror_reads_sources_list_d_and_ignores_other_files(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(DEB822)
    (d / "other.list.disabled-by-farm").write_text("deb http://nope.example/ bookworm main\n")
    assert find_mirror("bookworm", etc=tmp_path) == "http://mirror.example/debian"
    with pytest.raises(BuildError, match="no apt source for suite 'sid'"):
        find_mirror("sid", etc=tmp_path)
