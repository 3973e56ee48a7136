"""Shared corpus of real event logs (read-only, outside the repo: ../shared/eventlogs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# tests/unit/eventlog/conftest.py -> repo root is parents[3]; the corpus is its sibling.
REPO = Path(__file__).resolve().parents[3]
CORPUS = (REPO / ".." / "shared" / "eventlogs").resolve()
LOGS = sorted(CORPUS.glob("*.bin"))


def corpus_dir() -> Path:
    if not CORPUS.is_dir() or len(LOGS) < 20:
        pytest.fail(f"event-log corpus missing at {CORPUS} (CI always provides it)")
    return CORPUS


@pytest.fixture
def corpus() -> Path:
    return corpus_dir()


def read_log(name: str) -> bytes:
    return (corpus_dir() / f"{name}.bin").read_bytes()


def yaml_pcrs(path: Path) -> dict[str, dict[str, str]]:
    """The `pcrs:` section of tpm2-tools' expected YAML: {bank: {pcr: hex}}."""
    out: dict[str, dict[str, str]] = {}
    bank = None
    inside = False
    for line in path.read_text().splitlines():
        if line.startswith("pcrs:"):
            inside = True
            continue
        if not inside:
            continue
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            bank = m.group(1)
            out[bank] = {}
            continue
        m = re.match(r"^    (\d+)\s*:\s*0x([0-9a-fA-F]+)\s*$", line)
        if m and bank is not None:
            out[bank][m.group(1)] = m.group(2).lower()
        elif line and not line.startswith(" "):
            break
    return out
