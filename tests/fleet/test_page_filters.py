"""The fleet page's search and filters at the HTTP level, on a store of 10,000 nodes: by node id
substring, verdict, release and enrollment strength, on the server (query parameters of ``/``,
a plain GET form: no script), paged 500 at a time with the filters kept in the links; a bad
value is a 422 in the service's error shape, never a 5xx."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from tests.support.store import SIM, outcome

from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.pages import PAGE_ROWS
from attest.verifier.fleet.store import SqliteStore

N = 10_000
NEEDLE = 7777  # the one contraindicated node


def _name(i: int) -> str:
    return f"node-{i:05d}"


def _enrolled(i: int) -> bool:
    return i % 100 != 1


def _verdict(i: int) -> str:
    if not _enrolled(i):
        return "unenrolled"
    return "contraindicated" if i == NEEDLE else "warning" if i % 50 == 0 else "affirming"


def _release(i: int) -> str | None:
    return None if not _enrolled(i) else "1.1.0" if i % 7 == 0 else "1.0.0"


def _strength(i: int) -> str | None:
    return None if not _enrolled(i) else "activated" if i % 3 == 0 else "tofu"


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = SqliteStore(str(tmp_path_factory.mktemp("big") / "fleet.db"))
    now = time.time()
    tofu = SIM.enrollment(0)
    activated = dataclasses.replace(tofu, activated=True)
    for i in range(N):
        e = None if not _enrolled(i) else activated if _strength(i) == "activated" else tofu
        store.add_node(_name(i), f"http://127.0.0.1:1/{i}", e, now=now - 5)
    while leased := store.lease("w", now=now, limit=1000, ttl=60):
        done = [
            outcome(n, now, _verdict(int(n.node_id[5:])), release=_release(int(n.node_id[5:])))
            for n in leased
        ]
        assert len(store.complete("w", done)) == len(done)
    yield TestClient(create_fleet_app(store, access=Access("w" * 16), clock=lambda: now + 1))
    store.close()


def _listed(page: str) -> list[str]:
    """The node ids of the overview's rows, in order."""
    return re.findall(r'<tr><td><a href="/nodes/([^"]+)">', page)


def test_search_by_id_substring_finds_one_node_among_10000(big: TestClient) -> None:
    r = big.get("/", params={"q": "07777"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert _listed(r.text) == [_name(NEEDLE)]
    assert "Nodes matching the filters: 1–1 of 1" in r.text
    assert 'value="07777"' in r.text  # the box keeps what was searched
    assert _listed(big.get("/", params={"q": "NODE-0777"}).text) == [  # case-insensitive
        _name(i) for i in sorted(range(7770, 7780), key=lambda i: (i != NEEDLE, i))
    ]


def test_filter_by_verdict(big: TestClient) -> None:
    assert _listed(big.get("/?verdict=contraindicated").text) == [_name(NEEDLE)]
    page = big.get("/?verdict=warning").text
    want = [_name(i) for i in range(N) if _verdict(i) == "warning"]
    assert sorted(_listed(page)) == want and len(want) == 200
    assert '<option value="warning" selected>' in page


def test_filters_combine(big: TestClient) -> None:
    page = big.get("/", params={"verdict": "warning", "release": "1.1.0"}).text
    want = [_name(i) for i in range(N) if _verdict(i) == "warning" and _release(i) == "1.1.0"]
    assert sorted(_listed(page)) == want and 0 < len(want) < 50
    page = big.get("/", params={"enrollment": "activated", "q": "node-099"}).text
    want = [_name(i) for i in range(9900, 10_000) if _strength(i) == "activated"]
    assert sorted(_listed(page)) == want and len(want) == 34
    assert big.get("/", params={"q": "node-1"}).text.count("No node matches") == 1


def test_release_and_verdict_links_are_one_click_filters(big: TestClient) -> None:
    page = big.get("/").text
    assert 'class="tile contraindicated" href="/?verdict=contraindicated"' in page
    tofu = big.get("/?enrollment=tofu&verdict=unenrolled").text
    assert _listed(tofu) == []  # an unenrolled node has no strength


def test_paging_keeps_the_filters(big: TestClient) -> None:
    first = big.get("/?verdict=affirming").text
    matching = sum(_verdict(i) == "affirming" for i in range(N))
    pages = -(-matching // PAGE_ROWS)
    assert len(_listed(first)) == PAGE_ROWS and f"Page 1 of {pages}." in first
    assert 'href="/?verdict=affirming&amp;page=2">next' in first
    seen: list[str] = []
    for p in range(1, pages + 1):
        seen += _listed(big.get(f"/?verdict=affirming&page={p}").text)
    assert len(seen) == len(set(seen)) == matching  # every node once, none twice
    last = big.get(f"/?verdict=affirming&page={pages}").text
    assert "page=" + str(pages - 1) + '">← previous' in last and "next →" not in last
    assert _listed(big.get(f"/?verdict=affirming&page={pages + 1}").text) == []
    everything = big.get("/").text  # no filter: 10,000 nodes, the most severe first
    assert _listed(everything)[0] == _name(NEEDLE) and f"of {N}" in everything


@pytest.mark.parametrize(
    "query",
    [
        "verdict=bogus",
        "verdict=AFFIRMING",
        "enrollment=weak",
        "page=0",
        "page=abc",
        "page=99999999999999999999",
        "q=%00x",
        "q=" + "a" * 129,
        "release=1.0.0%20x",
    ],
)
def test_a_bad_filter_is_a_422_in_the_error_shape(big: TestClient, query: str) -> None:
    r = big.get("/?" + query)
    assert r.status_code == 422, r.text[:300]
    body = r.json()
    assert set(body) == {"error", "check", "detail"}
    assert body["error"] == "RequestValidationError" and body["check"] == "request-schema"
    assert "query." in body["detail"]


def test_search_text_is_escaped(big: TestClient) -> None:
    page = big.get("/", params={"q": '"><script>alert(1)</script>'}).text
    assert "<script>" not in page and "&lt;script&gt;" in page and _listed(page) == []
