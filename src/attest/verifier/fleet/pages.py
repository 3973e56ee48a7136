"""The fleet service's pages for people (``/`` and ``/nodes/{id}``): rendered on the server
with no script; every string a node or the store supplied is HTML-escaped. Pure (strings in,
HTML out).

The overview is searched and filtered on the server (``NodeFilter``: query parameters of ``/``,
a plain HTML form, no script) and paged ``PAGE_ROWS`` at a time: a node among 10,000 is found
by typing part of its id, or by one click on a verdict tile or a release."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlencode

from attest.appraisal.layers import LAYERS as PAIR_LAYERS
from attest.enroll import EnrollmentStrength
from attest.manifest.evaluate import EmbargoState
from attest.verifier.fleet.model import Freshness, NodeRow, NodeStatus, iso, rank
from attest.verifier.fleet.rollout import ReleaseRollout
from attest.verifier.fleet.trust import NO_REGISTRY, RegistryState

PAGE_ROWS = 500

# The filters' query parameters (validated by the route: anything else is a 422 in the
# service's error shape). Empty means "any", as an HTML form sends an untouched field.
SEARCH_RULE = r"^[^\x00-\x1f\x7f]{0,128}$"  # printable: escaped wherever it is shown
RELEASE_RULE = r"^[\x21-\x7e]{0,128}$"
VERDICT_RULE = "^(|" + "|".join(re.escape(s.value) for s in NodeStatus) + ")$"
STRENGTH_RULE = "^(|" + "|".join(re.escape(s.value) for s in EnrollmentStrength) + ")$"
MAX_PAGE = 1_000_000


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """Which nodes the overview lists: an id substring (case-insensitive), a verdict as the page
    shows it (``stale`` included; a stale node also matches its stored verdict, as
    ``/v1/nodes?verdict=`` does), a release, an enrollment strength; and the page."""

    search: str = ""
    verdict: NodeStatus | None = None
    release: str = ""
    enrollment: EnrollmentStrength | None = None
    page: int = 1

    @property
    def active(self) -> bool:
        return bool(self.search or self.verdict or self.release or self.enrollment)

    def matches(self, n: NodeRow, state: NodeStatus) -> bool:
        return (
            (not self.search or self.search.casefold() in n.node_id.casefold())
            and (self.verdict is None or self.verdict in (state, n.verdict))
            and (not self.release or n.release == self.release)
            and (self.enrollment is None or n.enrollment == self.enrollment)
        )

    def href(self, **change: Any) -> str:
        """The overview's URL with these filters (and ``change``): what the links carry."""
        f = replace(self, **change)
        params = {
            "q": f.search,
            "verdict": f.verdict or "",
            "release": f.release,
            "enrollment": f.enrollment or "",
            "page": "" if f.page == 1 else str(f.page),
        }
        query = urlencode({k: v for k, v in params.items() if v})
        return "/?" + query if query else "/"


# --- HTML ------------------------------------------------------------------------------------


def _e(v: object) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    s = max(0, int(now - t))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 24px}header h1{margin:0;font-size:18px}
main{padding:16px 24px}section{background:#fff;border:1px solid #dde1e7;border-radius:6px;
margin-bottom:16px;padding:12px 16px}h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:4px 8px;
border-bottom:1px solid #eef0f3;vertical-align:top}th{font-weight:600;color:#555}
.v{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}
.affirming{background:#d7f5df;color:#11612c}.warning{background:#fff1c7;color:#7a5500}
.contraindicated{background:#ffd9d6;color:#8f1610}.unreachable{background:#e3dcff;color:#3c2a8f}
.none,.unenrolled{background:#e6e8eb;color:#444}.stale{background:#ffe0b8;color:#7a3a00}
.tiles{display:flex;gap:12px;flex-wrap:wrap}.tile{padding:8px 14px;border-radius:6px;
min-width:110px}.tile b{display:block;font-size:22px}
.bar{background:#eef0f3;border-radius:4px;height:10px;width:200px;display:inline-block}
.bar i{display:block;height:10px;border-radius:4px;background:#2f7d4a}
.overdue{color:#8f1610;font-weight:600}.muted{color:#777}code{font-size:12px}
.layers{margin-top:3px;font-size:12px;color:#555;white-space:nowrap}
.alarm{border-color:#8f1610;background:#ffd9d6;color:#8f1610}
a.tile{text-decoration:none;color:inherit}a.tile:hover{outline:2px solid #1d2330}
form.filters{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin:0 0 10px}
form.filters input[type=search]{min-width:240px}td:first-child a{white-space:nowrap}
.pager{margin-top:8px}.pager a{margin-right:12px}
"""


def _page(title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>attest fleet — {_e(title)}</h1></header><main>{body}</main>"
        "</body></html>"
    )


def _badge(verdict: str) -> str:
    cls = verdict if rank(verdict) < 9 else NodeStatus.NONE
    return f'<span class="v {cls}">{_e(verdict)}</span>'


def _shown(n: NodeRow, now: float, freshness: Freshness) -> str:
    """The node's verdict; a stale one is never shown as current: ``stale``, then the last
    verdict and its age."""
    if not freshness.stale(n, now):
        return _badge(n.verdict)
    return (
        f"{_badge(NodeStatus.STALE)} <span class=muted>last {_badge(n.verdict)} "
        f"{_e(_ago(n.last_appraised, now))}</span>"
    )


def _rank(n: NodeRow, now: float, freshness: Freshness) -> tuple[float, str]:
    """Most severe first; a stale node right after the unreachable ones."""
    return (rank(freshness.state(n, now)), n.node_id)


def _releases_html(releases: list[ReleaseRollout]) -> str:
    if not releases:
        return "<p class=muted>No trusted registry configured: rollout is not tracked.</p>"
    rows = []
    for r in releases:
        pct = 100 * r.share
        clock = {
            EmbargoState.NONE: "—",
            EmbargoState.DISCLOSED: "disclosed",
            EmbargoState.AWAITING_FLEET: "waiting for the whole fleet",
        }.get(r.embargo, "")
        if r.embargo in (EmbargoState.QUIET_PERIOD, EmbargoState.OVERDUE):
            due = r.disclosure_due.strftime("%Y-%m-%d %H:%M UTC") if r.disclosure_due else "?"
            src = " (observed by this service)" if r.fleet_complete_source == "observed" else ""
            cls = "overdue" if r.overdue else ""
            word = "OVERDUE — disclosure was due" if r.overdue else "quiet period; disclosure due"
            clock = f'<span class="{cls}">{word} {_e(due)}</span>{_e(src)}'
        revoked = " <span class=overdue>revoked</span>" if r.revoked else ""
        rows.append(
            f'<tr><td><a href="{_e(NodeFilter(release=r.version).href())}"><b>{_e(r.version)}</b>'
            f"</a>{revoked}</td><td>{r.running} / {r.total}</td>"
            f'<td><span class=bar><i style="width:{pct:.1f}%"></i></span> {pct:.1f}%</td>'
            f"<td>{clock}</td><td class=muted>{_e(r.note)}</td></tr>"
        )
    return (
        "<table><tr><th>Release</th><th>Nodes</th><th>Rollout</th><th>Embargo clock</th>"
        f"<th></th></tr>{''.join(rows)}</table>"
    )


def _layers(n: NodeRow) -> list[tuple[str, dict[str, Any]]]:
    lay = n.layers or {}
    return [(name, lay[name]) for name in PAIR_LAYERS if isinstance(lay.get(name), dict)]


def _layer_badges(n: NodeRow) -> str:
    """A pair's row: each layer's verdict under the pair's."""
    if not n.pair:
        return ""
    parts = [f"<div>{name} {_badge(str(lay.get('verdict')))}</div>" for name, lay in _layers(n)]
    return f"<div class=layers>{''.join(parts) or 'layers: not appraised yet'}</div>"


def _layers_html(n: NodeRow) -> str:
    if not n.pair:
        return ""
    lay = n.layers or {}
    rows = (
        "".join(
            f"<tr><td><b>{_e(name)}</b></td><td>{_e(d.get('node_id'))}</td>"
            f"<td><code>{_e(d.get('url'))}</code></td><td>{_badge(str(d.get('verdict')))}</td>"
            f"<td>{_e(d.get('explanation'))}</td><td>{_e(d.get('release') or '—')}</td></tr>"
            for name, d in _layers(n)
        )
        or "<tr><td colspan=6 class=muted>Not appraised yet.</td></tr>"
    )
    v = lay.get("vouch")
    vouch: dict[str, Any] = v if isinstance(v, dict) else {}
    failed = lay.get("failed_layer")
    return (
        "<section><h2>Host and guest</h2><table><tr><th>Layer</th><th>Node</th><th>URL</th>"
        f"<th>Verdict</th><th>Explanation</th><th>Release</th></tr>{rows}</table>"
        f"<p>Failed layer: <b>{_e(failed or '—')}</b>. Host vouching: "
        f"{_e(vouch.get('explanation') or '—')}</p></section>"
    )


def sorry_page(node_id: str) -> str:
    return _page("Not found", f"<p>No node {_e(node_id)}.</p>")


def _registry_banner(registry: RegistryState) -> str:
    """Said first on every page while no node can be appraised."""
    if registry.ok:
        return ""
    return (
        "<section class=alarm><h2>No node is appraised: the trusted registry is not usable"
        f"</h2><p>{_e(registry.problem)}</p><p>Every node is could-not-appraise until a "
        "valid, fresh registry is back (re-read every minute).</p></section>"
    )


def _strength(n: NodeRow) -> str:
    """The enrollment's strength, TOFU said loudly."""
    if n.enrollment is None:
        return "<span class=muted>not enrolled</span>"
    cls = "overdue" if n.enrollment == "tofu" else ""
    return f'<span class="{cls}">{_e(n.enrollment)}</span>'


def _option(value: str, label: str, chosen: str) -> str:
    sel = " selected" if value == chosen else ""
    return f'<option value="{_e(value)}"{sel}>{_e(label)}</option>'


def _filters_form(flt: NodeFilter, releases: list[str]) -> str:
    """The search box and the three filters: a GET form, so it works without script."""

    def select(name: str, label: str, values: list[str], chosen: str) -> str:
        opts = "".join(_option(v, v, chosen) for v in values)
        return (
            f'<label>{_e(label)} <select name="{name}">{_option("", "any", chosen)}{opts}'
            "</select></label>"
        )

    strengths = [s.value for s in EnrollmentStrength]
    clear = '<a href="/">clear</a>' if flt.active else ""
    return (
        '<form class=filters method="get" action="/" role="search">'
        '<input type="search" name="q" maxlength="128" placeholder="node id contains…" '
        f'aria-label="node id contains" value="{_e(flt.search)}">'
        f"{select('verdict', 'Verdict', [s.value for s in NodeStatus], flt.verdict or '')}"
        f"{select('release', 'Release', releases, flt.release)}"
        f"{select('enrollment', 'Enrollment', strengths, flt.enrollment or '')}"
        f'<button type="submit">Filter</button>{clear}</form>'
    )


def _pager(flt: NodeFilter, matching: int) -> str:
    pages = max(1, -(-matching // PAGE_ROWS))
    if pages == 1:
        return ""
    links = []
    if flt.page > 1:
        links.append(f'<a href="{_e(flt.href(page=min(flt.page - 1, pages)))}">← previous</a>')
    if flt.page < pages:
        links.append(f'<a href="{_e(flt.href(page=flt.page + 1))}">next →</a>')
    return f"<p class=pager>Page {flt.page} of {pages}. {''.join(links)}</p>"


def _node_row(n: NodeRow, now: float, freshness: Freshness) -> str:
    return (
        f'<tr><td><a href="/nodes/{_e(quote(n.node_id, safe=""))}">{_e(n.node_id)}</a>'
        f"{' <span class=muted>host + guest</span>' if n.pair else ''}</td>"
        f"<td>{_shown(n, now, freshness)}{_layer_badges(n)}</td><td>{_strength(n)}</td>"
        f"<td>{_e(n.explanation[:300])}</td><td>{_e(n.release or '—')}</td>"
        f"<td>{_e(_ago(n.last_appraised, now))}</td></tr>"
    )


def render_overview(
    nodes: list[NodeRow],
    releases: list[ReleaseRollout],
    *,
    now: float,
    registry: RegistryState = NO_REGISTRY,
    freshness: Freshness = Freshness(),  # noqa: B008 - frozen, immutable
    flt: NodeFilter = NodeFilter(),  # noqa: B008 - frozen, immutable
) -> str:
    counts: dict[NodeStatus, int] = {}
    states = [(n, freshness.state(n, now)) for n in nodes]
    for _, k in states:
        counts[k] = counts.get(k, 0) + 1
    tiles = "".join(
        f'<a class="tile {k}" href="{_e(NodeFilter(verdict=k).href())}"><b>{counts[k]}</b>'
        f"{_e(k)}</a>"
        for k in sorted(counts, key=rank)
    )
    matching = sorted(
        (n for n, k in states if flt.matches(n, k)), key=lambda n: _rank(n, now, freshness)
    )
    first = (flt.page - 1) * PAGE_ROWS
    shown = matching[first : first + PAGE_ROWS]
    rows = "".join(_node_row(n, now, freshness) for n in shown) or (
        "<tr><td colspan=6 class=muted>No node matches these filters.</td></tr>"
    )
    known = sorted({r.version for r in releases} | {n.release for n in nodes if n.release})
    span = f"{first + 1}–{first + len(shown)} of " if shown else ""
    title = "Nodes (most severe first)"
    if flt.active:
        title = f"Nodes matching the filters: {span}{len(matching)} (most severe first)"
    elif len(matching) > PAGE_ROWS:
        title = f"Nodes {span}{len(matching)} (most severe first)"
    body = (
        f"{_registry_banner(registry)}"
        f"<section><h2>Fleet: {len(nodes)} nodes</h2><div class=tiles>{tiles}</div></section>"
        f"<section><h2>Releases: rollout and embargo clocks</h2>{_releases_html(releases)}"
        f"</section><section><h2>{_e(title)}</h2>{_filters_form(flt, known)}"
        "<table><tr><th>Node</th><th>Verdict</th><th>Enrollment</th><th>Explanation</th>"
        f"<th>Release</th><th>Last appraised</th></tr>{rows}</table>"
        f"{_pager(flt, len(matching))}</section>"
    )
    return _page("overview", body, refresh=10)


def render_node(
    n: NodeRow,
    results: list[dict[str, Any]],
    changes: list[dict[str, Any]],
    *,
    now: float,
    registry: RegistryState = NO_REGISTRY,
    freshness: Freshness = Freshness(),  # noqa: B008 - frozen, immutable
) -> str:
    latest = results[0].get("result") if results else None
    findings = ""
    if isinstance(latest, dict):
        # One node's result, or a pair's (attest.appraisal.pair.PairResult.to_json: both layers').
        parts = [("", latest)]
        if isinstance(latest.get("layers"), dict):
            parts = [(f"{k}: ", v) for k, v in latest["layers"].items() if isinstance(v, dict)]
        findings = "".join(
            f"<tr><td>{_e(prefix)}{_e(f.get('claim'))}</td><td>{_badge(str(f.get('tier')))}</td>"
            f"<td>{_e(f.get('check'))}</td><td>{_e(f.get('explanation'))}</td></tr>"
            for prefix, doc in parts
            for f in (doc.get("findings") or [])
            if isinstance(f, dict)
        )
        findings = (
            (
                "<table><tr><th>Claim</th><th>Tier</th><th>Check</th><th>Finding</th></tr>"
                f"{findings}</table>"
            )
            if findings
            else "<p class=muted>No findings.</p>"
        )
    hist = (
        "".join(
            f"<tr><td>{_e(iso(c['at']))}</td><td>{_badge(c['from'])} → {_badge(c['to'])}</td>"
            f"<td>{_e(c['explanation'])}</td></tr>"
            for c in changes
        )
        or "<tr><td colspan=3 class=muted>No changes yet.</td></tr>"
    )
    recent = "".join(
        f"<tr><td>{_e(iso(r.get('at')))}</td><td>{_badge(str(r.get('verdict')))}</td>"
        f"<td>{_e(r.get('worker_id'))}</td><td>{_e(r.get('error') or '')}</td></tr>"
        for r in results
    )
    body = (
        f"{_registry_banner(registry)}"
        f"<section><h2>{_e(n.node_id)} {_shown(n, now, freshness)}</h2><table>"
        f"<tr><th>Explanation</th><td>{_e(n.explanation)}</td></tr>"
        f"<tr><th>Enrollment</th><td>{_strength(n)}</td></tr>"
        f"<tr><th>First divergence</th><td>{_e(n.first_divergence or '—')}</td></tr>"
        f"<tr><th>Release attested</th><td>{_e(n.release or '—')}</td></tr>"
        f"<tr><th>URL</th><td><code>{_e(n.url)}</code>"
        f"{' (guest; host <code>' + _e(n.host_url) + '</code>)' if n.pair else ''}</td></tr>"
        f"<tr><th>Last appraised</th><td>{_e(_ago(n.last_appraised, now))} "
        f"({n.appraisals} appraisals)</td></tr>"
        f"<tr><th>Last error</th><td>{_e(n.last_error or '—')} "
        f"{'(' + str(n.failures) + ' consecutive failures)' if n.failures else ''}</td></tr>"
        "</table></section>"
        f"{_layers_html(n)}"
        "<section><h2>Findings of the latest appraisal</h2>"
        f"{findings or '<p class=muted>None.</p>'}</section>"
        f"<section><h2>Verdict history</h2><table>{hist}</table></section>"
        "<section><h2>Recent appraisals</h2><table><tr><th>At</th><th>Verdict</th><th>Worker</th>"
        f'<th>Error</th></tr>{recent}</table></section><p><a href="/">← fleet</a></p>'
    )
    return _page(n.node_id, body, refresh=10)
