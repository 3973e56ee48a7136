"""attestd's ``/metrics`` through prometheus-client: ``promtool check metrics`` clean (HELP on
every metric, ``_total`` counters, base units), one registry per app (two apps in one process
count apart), and the names documented in docs/api.md exactly as exposed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from tests.api.conftest import AppFactory, _running, challenge
from tests.conftest import need_binaries
from tests.support.prom import promtool_problems, samples

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


async def test_attestd_metrics_pass_promtool(client: httpx.AsyncClient) -> None:
    need_binaries("promtool")
    _, r = await challenge(client)
    assert r.status_code == 200
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert promtool_problems(answer.text) == ""
    got = samples(answer.text)
    assert got["attest_challenges_total"] == 1 and got["attest_quotes_total"] == 1
    assert got["attest_tpm_ready"] == 1 and got["attest_state_fs_free_bytes"] > 0


def test_promtool_catches_a_metric_without_help() -> None:
    """The check above can fail: the exposition attestd wrote before prometheus-client (a
    gauge without HELP) is refused."""
    need_binaries("promtool")
    problems = promtool_problems("# TYPE attest_tpm_ready gauge\nattest_tpm_ready 1\n")
    assert "attest_tpm_ready no help text" in problems


async def test_every_metric_has_help_and_counters_end_in_total(
    client: httpx.AsyncClient,
) -> None:
    text = (await client.get("/metrics")).text
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 12
    for fam in families:
        assert fam.documentation.strip(), fam.name
        assert fam.name.startswith("attest_"), fam.name
        if fam.type == "counter":
            assert f"# TYPE {fam.name}_total counter" in text, fam.name


async def test_two_apps_in_one_process_count_apart(app_factory: AppFactory, node: Any) -> None:
    one, two = app_factory(), app_factory()
    async with _running(one, "public") as a, _running(two, "public") as b:
        for _ in range(3):
            assert (await challenge(a))[1].status_code == 200
        assert samples((await a.get("/metrics")).text)["attest_challenges_total"] == 3
        assert samples((await b.get("/metrics")).text)["attest_challenges_total"] == 0
    # Nothing was registered in prometheus-client's process-wide default registry.
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("attest_")]


def _documented() -> set[str]:
    """The metric names in the table of docs/api.md's metrics section."""
    text = DOC.read_text()
    section = text.split("## Metrics (`GET /metrics`)", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(attest_[a-z_]+)", section, re.MULTILINE))


async def test_docs_name_every_metric_and_no_other(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    exposed = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(text)
    }
    assert exposed == _documented()
