"""The fleet page in a real headless Chromium (Debian's ``chromium``), with a screenshot: fleet
overview, per-node verdict and explanation, a host + guest pair with each layer's verdict,
rollout and embargo clock; hostile node-supplied strings are escaped."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import httpx
from tests.conftest import need_binaries
from tests.fleet.conftest import Registry
from tests.fleet.site import chromium, fleet_site
from tests.support.prom import samples

from attest.verifier.fleet.store import SqliteStore


def test_fleet_page_in_headless_chromium(tmp_path: Path, registry: Registry) -> None:
    need_binaries("chromium")
    with fleet_site(tmp_path, registry) as site:
        _look_at_the_fleet(site.base, site.store, tmp_path)


def _look_at_the_fleet(base: str, store: SqliteStore, tmp_path: Path) -> None:
    verdicts = {n.node_id: n.verdict for n in store.list_nodes()}
    assert verdicts["node-0"] == "affirming" and verdicts["node-3"] == "contraindicated"
    assert verdicts["hostile"] == "unreachable" and verdicts["pair-1"] == "contraindicated"

    page = httpx.get(base + "/").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "contraindicated" in page and "runtime log" in page  # node-3's explanation
    assert "1.2.0" in page and "waiting for the whole fleet" in page  # 3 of 5 run it
    node_page = httpx.get(base + "/nodes/node-3").text
    assert "runtime log" in node_page and "Verdict history" in node_page
    releases = httpx.get(base + "/v1/releases").json()["releases"]
    r120 = next(r for r in releases if r["version"] == "1.2.0")
    assert r120["running"] == 3 and r120["total"] == 7 and r120["embargo"] == "awaiting_fleet"
    metrics = samples(httpx.get(base + "/metrics").text)
    assert metrics['attest_fleet_nodes{verdict="contraindicated"}'] == 2

    shot = tmp_path / "fleet.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1280,900", base + "/")
    assert shot.exists(), run.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not blank
    dom = chromium("--dump-dom", base + "/nodes/node-3").stdout.decode()
    assert "contraindicated" in dom and "runtime log" in dom
    # The pair's row shows both layers: the host affirming, the guest contraindicated.
    overview = chromium("--dump-dom", base + "/").stdout.decode()
    row = next(r for r in overview.split("<tr>") if "pair-1" in r)
    assert "host + guest" in row and "guest layer (sim-6)" in row
    assert 'host <span class="v affirming">affirming</span>' in row
    assert 'guest <span class="v contraindicated">contraindicated</span>' in row
    pair = chromium("--dump-dom", base + "/nodes/pair-1").stdout.decode()
    assert "Host and guest" in pair and "not vouched for by the host" in pair
    keep = Path(tempfile.gettempdir()) / "attest-fleet-page.png"
    shutil.copyfile(shot, keep)  # for a person to look at after the run


def test_fleet_page_filters_in_headless_chromium(tmp_path: Path, registry: Registry) -> None:
    """The search and the filters as a browser without script sees them: the filtered page
    lists the matching nodes and no other (its rows are the server's answer to the URL the
    form submits)."""
    need_binaries("chromium")
    with fleet_site(tmp_path, registry) as site:
        dom = chromium("--dump-dom", site.base + "/?q=node-3").stdout.decode()
        assert _listed(dom) == ["node-3"], dom[-3000:]
        assert 'value="node-3"' in dom and "Nodes matching the filters: 1–1 of 1" in dom
        dom = chromium("--dump-dom", site.base + "/?verdict=unreachable").stdout.decode()
        assert _listed(dom) == ["hostile"]
        dom = chromium("--dump-dom", site.base + "/?release=1.2.0&verdict=affirming").stdout
        assert _listed(dom.decode()) == ["node-0", "node-1", "node-2"]
        assert '<option value="1.2.0" selected="">1.2.0</option>' in dom.decode()
        dom = chromium("--dump-dom", site.base + "/?enrollment=ek-chain%2Bactivated").stdout
        assert _listed(dom.decode()) == [] and "No node matches these filters." in dom.decode()
        shot = tmp_path / "filtered.png"
        url = site.base + "/?verdict=contraindicated"
        run = chromium(f"--screenshot={shot}", "--window-size=1280,900", url)
    assert shot.exists(), run.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    shutil.copyfile(shot, Path(tempfile.gettempdir()) / "attest-fleet-filtered.png")


def _listed(dom: str) -> list[str]:
    """The node ids of the overview's rows, in order."""
    return re.findall(r'<tr><td><a href="/nodes/([^"]+)">', dom)
