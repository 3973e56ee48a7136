"""The fleet service's ``/metrics`` through prometheus-client: ``promtool check metrics`` clean
on a fleet a real poller appraised (every family present: verdict and strength labels, rollout
ratios, the embargo clock, the latency histogram, webhook counters), one registry per app, and
the names documented in docs/fleet.md exactly as exposed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import need_binaries
from tests.fleet.conftest import Registry
from tests.fleet.site import fleet_site
from tests.support.prom import promtool_problems, samples

from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.store import SqliteStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"


def _documented() -> set[str]:
    """The metric names in the table of docs/fleet.md's metrics section."""
    text = DOC.read_text()
    section = text.split("## Metrics (`GET /metrics`)", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(attest_[a-z_]+)", section, re.MULTILINE))


def test_fleet_metrics_pass_promtool_and_match_the_docs(tmp_path: Path, registry: Registry) -> None:
    need_binaries("promtool")
    with fleet_site(tmp_path, registry) as site:
        answer = httpx.get(site.base + "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert promtool_problems(answer.text) == ""
    families = list(text_string_to_metric_families(answer.text))
    for fam in families:
        assert fam.documentation.strip(), fam.name
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert exposed == _documented()
    got = samples(answer.text)
    assert got["attest_fleet_database_up"] == 1 and got["attest_fleet_registry_ok"] == 1
    assert got['attest_fleet_nodes{verdict="affirming"}'] == 4
    assert got['attest_fleet_nodes{verdict="unreachable"}'] == 1
    assert got['attest_fleet_release_share_ratio{version="1.2.0"}'] == 3 / 7
    assert got['attest_fleet_embargo_overdue{version="1.2.0"}'] == 0
    assert got["attest_fleet_appraisals_total"] == site.poller.metrics.appraisals >= 6
    timed = sum(site.poller.metrics.latency_buckets)  # every contact, 7 nodes at least
    assert got['attest_fleet_appraisal_seconds_bucket{le="+Inf"}'] == timed >= 7
    assert got["attest_fleet_appraisal_seconds_count"] == timed
    assert got["attest_fleet_appraisal_seconds_sum"] == site.poller.metrics.latency_sum > 0
    assert got["attest_fleet_webhooks_sent_total"] == 0


def test_two_fleet_apps_in_one_process_keep_their_own_registry(tmp_path: Path) -> None:
    stores = [SqliteStore(str(tmp_path / f"{k}.db")) for k in ("a", "b")]
    stores[0].add_node("only-in-a", "http://127.0.0.1:1/", None, now=time.time())
    apps = [create_fleet_app(s, access=Access("w" * 16)) for s in stores]
    got = [samples(TestClient(a).get("/metrics").text) for a in apps]
    assert got[0]['attest_fleet_nodes{verdict="unenrolled"}'] == 1
    assert got[1]['attest_fleet_nodes{verdict="unenrolled"}'] == 0
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("attest_")]
    for s in stores:
        s.close()
