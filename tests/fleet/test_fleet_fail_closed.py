"""Issue 14, items 5-7, through real ``attest fleet serve`` processes: the fleet appraises only
against a valid, fresh registry (missing, expired or unreadable: every node could-not-appraise,
named on the page, REST, metrics and webhooks, until a valid one is back); it does not start
without a registry unless the developer rule says so; an enrolled id is never taken over
silently (409, or an explicit re-enrollment recorded in the history, "weaker" said); the
continuity of what the fleet verified survives a restart, so a node that deleted its audit
history across a reboot is contraindicated; the enrollment strength is shown with every
verdict."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fleet.conftest import Registry, dev_policy, sim_server
from tests.support.manifest import NOW, release
from tests.support.poller import SIM_PLATFORM, SIM_PLATFORMS
from tests.support.prom import samples

from attest.errors import NodeIdTaken
from attest.manifest.trusted import TrustedState
from attest.storage.trusted_state import save_state
from attest.testing.fleet_sim import SimFleet, SimNode
from attest.testing.pg import free_port
from attest.verifier.fleet.store import SqliteStore
from attest.verifier.fleet.webhooks import verify_signature

SECRET = b"webhook-secret-0123456789"


# --- a real service ---------------------------------------------------------------------------


class Service:
    def __init__(self, tmp: Path, db: Path, *args: str, wait: bool = True) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp / f"fleet-{port}.log"
        cmd = [
            sys.executable,
            "-m",
            "attest.cli.fleet",
            "serve",
            "--db",
            f"sqlite:///{db}",
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "0.3",
            "--jitter",
            "0",
            "--timeout",
            "2",
            "--tofu",
            "--insecure-no-auth",
            "--ear-key",
            str(tmp / "ear.pem"),
            "--platform",
            SIM_PLATFORM,
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while wait:
            assert self.proc.poll() is None, self.text()
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def node(self, node_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.get(f"/v1/nodes/{node_id}").json()
        return doc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert "Traceback" not in self.text(), self.text()[-4000:]


@pytest.fixture()
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        yield started
    finally:
        for svc in started:
            svc.stop()


def until(what: Callable[[], bool], svc: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert svc.proc.poll() is None, svc.text()[-4000:]
        assert time.monotonic() < deadline, (svc.get("/v1/nodes").text, svc.text()[-4000:])
        time.sleep(0.1)


class Hooks:
    """A webhook receiver on a thread: every event whose signature checks."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items()}
                events.append(verify_signature(SECRET, headers, body, now=time.time()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _state(registry: Registry, *, expired: bool = False) -> TrustedState:
    world = registry.world
    rels = [release("1.0.0", 1), release("1.1.0", 2)]
    snap = (
        world.snapshot(2, expires=NOW + timedelta(days=1), releases=rels, platforms=SIM_PLATFORMS)
        if expired
        else world.snapshot(3, releases=rels, platforms=SIM_PLATFORMS)
    )
    return TrustedState.bootstrap(world.root_bytes(), now=NOW).update_registry(
        world.registry_bytes(snap), now=NOW
    )


def _metric(svc: Service, name: str) -> float:
    return samples(svc.get("/metrics").text)[name]


# --- item 5: no valid fresh registry, no appraisal --------------------------------------------


def test_fleet_without_a_valid_registry_appraises_nothing_until_one_is_back(
    tmp_path: Path, registry: Registry, services: list[Service]
) -> None:
    trust = tmp_path / "trust"  # missing at start
    secret = tmp_path / "hook-secret"
    secret.write_bytes(SECRET)
    hooks = Hooks()
    sim = SimFleet(2, verity_root_hash=registry.root_hash("1.0.0"))
    db = tmp_path / "fleet.db"
    with sim_server(sim) as srv:
        store = SqliteStore(str(db))
        for i in range(2):
            store.add_node(f"sim-{i}", srv.url(i), sim.enrollment(i), now=time.time())
        store.close()
        svc = Service(
            tmp_path,
            db,
            "--trust-dir",
            str(trust),
            "--registry-refresh",
            "0.2",
            "--webhook",
            hooks.url,
            "--webhook-secret-file",
            str(secret),
        )
        services.append(svc)

        def all_say(verdict: str, words: str = "") -> bool:
            nodes = svc.get("/v1/nodes").json()["nodes"]
            return all(
                n["verdict"] == verdict and words in n["explanation"] and n["appraisals"] > 0
                for n in nodes
            )

        # Missing: could-not-appraise, the problem named; the nodes are not even challenged.
        until(lambda: all_say("none", "no trusted state"), svc)
        doc = svc.get("/v1/nodes").json()
        assert doc["registry"]["ok"] is False and str(trust) in doc["registry"]["problem"]
        assert all(n["release"] is None for n in doc["nodes"])
        assert sum(node.requests for node in sim.nodes) == 0
        assert _metric(svc, "attest_fleet_registry_ok") == 0
        assert "No node is appraised" in svc.get("/").text
        result = svc.node("sim-0")["latest"]["result"]
        assert result["verdict"] == "could-not-appraise" and result["enrollment"] == "tofu"
        payload = svc.get("/v1/nodes/sim-0/ear").text.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        sm = claims["submods"]["sim-0"]
        assert sm["ear.status"] == "none" and sm["attest.enrollment"] == "tofu"
        assert "no trusted state" in sm["attest.explanation"]["first_divergence"]

        # A valid, fresh registry appears: appraised, and the release identified.
        save_state(trust, _state(registry))
        until(lambda: all_say("affirming"), svc)
        assert svc.node("sim-0")["release"] == "1.0.0"
        assert _metric(svc, "attest_fleet_registry_ok") == 1
        assert "No node is appraised" not in svc.get("/").text

        # Expired: every node could-not-appraise again, with the expiry named -- on the page,
        # REST, metrics and in a webhook.
        save_state(trust, _state(registry, expired=True))
        until(lambda: all_say("none", "expired"), svc)
        assert "expired" in svc.get("/").text
        assert _metric(svc, "attest_fleet_registry_ok") == 0
        until(lambda: sum(e["to"] == "none" for e in hooks.events) >= 2, svc)
        gone = [e for e in hooks.events if e["to"] == "none"]
        assert {e["from"] for e in gone} == {"affirming"}
        assert all("expired" in e["explanation"] for e in gone)
        assert all(e["enrollment_strength"] == "tofu" for e in gone)

        # Unreadable: a tampered state is not trusted.
        (trust / "registry.json").write_bytes(b"{not json")
        until(lambda: all_say("none", "unreadable"), svc)

        # Back: appraised again.
        shutil.rmtree(trust)
        save_state(trust, _state(registry))
        until(lambda: all_say("affirming"), svc)
        hooks.close()


def test_serve_without_a_registry_needs_the_developer_rule(tmp_path: Path) -> None:
    svc = Service(tmp_path, tmp_path / "f.db", wait=False)
    assert svc.proc.wait(30) != 0
    out = svc.text()
    assert "--trust-dir" in out and "allow_unidentified_release" in out, out
    assert "Traceback" not in out
    ok = Service(tmp_path, tmp_path / "g.db", "--policy", dev_policy(tmp_path))
    try:
        assert "developer rule allow_unidentified_release" in ok.text()
    finally:
        ok.stop()


# --- item 6: no silent takeover ---------------------------------------------------------------


class _Claims(SimFleet):
    """Simulated nodes that claim the ids given (a different TPM under an enrolled id)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(len(ids), seed="claims")
        self.ids = ids

    def identity(self, node: SimNode) -> dict[str, Any]:
        return {**super().identity(node), "node_id": self.ids[node.index]}


def test_an_enrolled_id_is_not_taken_over_without_an_explicit_re_enroll(
    tmp_path: Path, services: list[Service]
) -> None:
    sim = _Claims(["web-1", "web-1", "web-2"])
    with sim_server(sim) as srv:
        svc = Service(tmp_path, tmp_path / "f.db", "--policy", dev_policy(tmp_path))
        services.append(svc)
        first, claimer, other = srv.origin(0), srv.origin(1), srv.origin(2)

        def register(body: dict[str, Any]) -> httpx.Response:
            return httpx.post(svc.url + "/v1/nodes", json=body, timeout=30)

        r = register({"url": first})
        assert r.status_code == 201, r.text
        assert r.json()["enrollment_strength"] == "tofu"
        ak = r.json()["enrollment"]["ak_name"]

        # The same id again, a node claiming the enrolled id, another node given that id.
        for body in ({"url": first}, {"url": claimer}, {"url": other, "node_id": "web-1"}):
            refused = register(body)
            assert refused.status_code == 409, (body, refused.text)
            assert refused.json()["check"] == "node-id-taken"
            assert "'web-1'" in refused.json()["detail"]
        node = svc.node("web-1")
        assert node["url"] == first and node["enrollment_strength"] == "tofu"
        before = svc.get("/v1/nodes/web-1/history").json()["changes"]
        assert all(c["detail"] is None for c in before)  # verdict changes only
        assert sim.nodes[2].requests == 0  # refused before contacting it

        # Explicit: replaced, and recorded in the history.
        r = register({"url": claimer, "re_enroll": True})
        assert r.status_code == 201, r.text
        new_ak = r.json()["enrollment"]["ak_name"]
        assert new_ak != ak and r.json()["url"] == claimer
        assert r.json()["re_enrolled"]["detail"]["previous_ak"] == ak
        history = svc.get("/v1/nodes/web-1/history").json()["changes"]
        entry = next(c for c in history if c["detail"] is not None)
        assert entry["detail"]["event"] == "re-enroll"
        assert entry["detail"]["previous_ak"] == ak and entry["detail"]["new_ak"] == new_ak
        assert entry["detail"]["previous_url"] == first and entry["detail"]["new_url"] == claimer
        assert "REST" in entry["detail"]["by"] and entry["detail"]["weaker"] is False
        assert f"AK {ak[:16]}" in entry["explanation"]
        assert "re-enrolled" in svc.get("/nodes/web-1").text


def test_a_tofu_enrollment_never_replaces_an_activated_one_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attest.cli.fleet import main

    sim = SimFleet(1)
    db = tmp_path / "f.db"
    with sim_server(sim) as srv:
        url = srv.origin(0)
        store = SqliteStore(str(db))
        strong = replace(sim.enrollment(0), activated=True, ek_certificate="CN=EK CA")
        store.add_node("sim-0", url, strong, now=time.time())
        store.close()
        argv = ["add", url, "--tofu", "--db", f"sqlite:///{db}"]
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert "sim-0" in err and "already enrolled" in err and "--re-enroll" in err
        store = SqliteStore(str(db))
        node = store.get_node("sim-0")
        assert node is not None and node.enrollment == "ek-chain+activated"
        store.close()

        assert main([*argv, "--re-enroll", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["enrollment_strength"] == "tofu"
        assert out["re_enrolled"]["detail"]["weaker"] is True
        assert main(["show", "sim-0", "--db", f"sqlite:///{db}"]) == 0
        shown = capsys.readouterr().out
        assert "enrollment: tofu" in shown and "(WEAKER)" in shown
        assert "ek-chain+activated → tofu" in shown
        assert main(["ls", "--db", f"sqlite:///{db}"]) == 0
        assert "tofu" in capsys.readouterr().out


# --- continuity across a restart --------------------------------------------------------------


def test_continuity_survives_a_restart_and_a_deleted_audit_history_is_contraindicated(
    tmp_path: Path, registry: Registry, services: list[Service]
) -> None:
    trust = tmp_path / "trust"
    save_state(trust, _state(registry))
    sim = SimFleet(1, verity_root_hash=registry.root_hash("1.0.0"))
    entry_hash = hashlib.sha256(b"audit entry 3").digest()
    sim.measure(0, "audit", {"audit_seq": 3, "entry_hash": entry_hash.hex()})
    db = tmp_path / "fleet.db"
    args = ("--trust-dir", str(trust))
    with sim_server(sim) as srv:
        store = SqliteStore(str(db))
        store.add_node("sim-0", srv.url(0), sim.enrollment(0), now=time.time())
        store.close()
        first = Service(tmp_path, db, *args)
        services.append(first)
        until(lambda: first.node("sim-0")["verdict"] == "affirming", first)
        first.stop()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            row = conn.execute("SELECT continuity FROM nodes WHERE node_id = 'sim-0'")
            (text,) = row.fetchone()
        stored = json.loads(text)
        assert stored["audit_head"] == {"seq": 3, "entry_hash": entry_hash.hex()}

        # A reboot whose node deleted its audit history: a fresh, consistent, empty chain.
        srv.call(sim.reboot, 0)
        second = Service(tmp_path, db, *args)
        services.append(second)
        until(lambda: second.node("sim-0")["verdict"] == "contraindicated", second)
        node = second.node("sim-0")
        assert "audit entry #3" in node["explanation"], node["explanation"]
        assert "deleted" in node["explanation"]
        assert node["enrollment_strength"] == "tofu"
        # The reset is noted by the first appraisal after it (a later one may be the latest).
        with contextlib.closing(SqliteStore(str(db))) as store:
            results = store.results("sim-0", limit=100)
        notes = [n for r in results for n in (r.get("result") or {}).get("notes", [])]
        assert any("TPM reset" in n for n in notes), notes


def test_store_refuses_an_enrolled_id_and_resets_continuity_on_re_enroll(tmp_path: Path) -> None:
    sim = SimFleet(2)
    store = SqliteStore(str(tmp_path / "f.db"))
    store.add_node("n", "http://127.0.0.1:1", sim.enrollment(0), now=1.0)
    with pytest.raises(NodeIdTaken):
        store.add_node("n", "http://127.0.0.1:2", sim.enrollment(1), now=2.0)
    entry = store.add_node("n", "http://127.0.0.1:2", sim.enrollment(1), now=2.0, re_enroll=True)
    assert entry is not None and entry["detail"]["weaker"] is False
    leased = store.lease("w", now=3.0, limit=1, ttl=1.0)
    assert leased[0].continuity is None and leased[0].clock is None
    assert leased[0].url == "http://127.0.0.1:2"
    store.close()


# --- --policy: the rules' runtime PCR at enrollment and in every appraisal --------------------


def test_policy_rules_choose_the_runtime_pcr_and_name_every_ear(
    tmp_path: Path, services: list[Service]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("runtime_pcr = 14\nallow_unidentified_release = true\n")
    on13, on14 = SimFleet(1, seed="p13"), SimFleet(1, seed="p14", runtime_pcr=14)
    with sim_server(on13) as s13, sim_server(on14) as s14:
        svc = Service(tmp_path, tmp_path / "f.db", "--policy", str(rules))
        services.append(svc)
        r = httpx.post(svc.url + "/v1/nodes", json={"url": s13.origin(0)}, timeout=30)
        assert r.status_code == 422 and r.json()["check"] == "runtime-pcr", r.text
        r = httpx.post(svc.url + "/v1/nodes", json={"url": s14.origin(0)}, timeout=30)
        assert r.status_code == 201, r.text
        until(lambda: svc.node("sim-0")["appraisals"] > 0, svc)
        result = svc.node("sim-0")["latest"]["result"]
        assert result["policy_id"].startswith("attest/custom@"), result["policy_id"]
        assert result["verdict"] == "affirming", result["explanations"]
        assert any("PCR 14" in f["explanation"] for f in result["findings"]), result["findings"]
