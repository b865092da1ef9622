"""The ring status page of the internal listener (``/status``): one HTML page for people.

It shows the ring as this pod saw it at its last heartbeat (the members and their lease
deadlines, a bar of the 16384 hash slots coloured by the member the assignment gives them), the
clusters this pod serves (last push time, series) and the uploads it refused, by reason.
``/debug/ring`` stays the machine interface; this page is built from the same view.

The page is one self-contained document: inline CSS and SVG, no script, no external asset (the
response's Content-Security-Policy forbids loading any). Every piece of dynamic text is escaped:
member names come from ``--name``; reasons are the fixed labels of `app.errors`.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi.responses import HTMLResponse
from prometheus_client import Counter

from app import snapshot
from app.errors import StoreUnavailable
from app.keys import RANGES, SLOTS, SLOTS_PER_RANGE

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

# A pod may serve thousands of clusters: the table shows the most recent pushes only.
MAX_CLUSTER_ROWS = 500
REFRESH_S = 10
UNASSIGNED = "(unassigned)"
UNASSIGNED_COLOUR = "#c8c8c8"
# Successive hues a golden angle apart stay distinct for any small number of members.
GOLDEN_ANGLE = 137.508
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """One cluster this pod serves: its id, the time of its last accepted push, its series."""

    cluster_id: str
    push_time_ms: int
    series: int


def cluster_info(snap: snapshot.Snapshot, *, partition_label: str) -> ClusterInfo | None:
    """The cluster of a stored snapshot, read from its push-time series (None if it has none).

    The snapshot container does not carry the cluster id; its last-push-time family does
    (``telemeter_push_time_seconds{_id="X"}``), and it is one short line to inflate.
    """
    pattern = re.compile(re.escape(partition_label) + r'="([^"\\]*)"')
    for family in snap.families:
        if family.name == snapshot.PUSH_TIME_FAMILY:
            match = pattern.search(family.text.decode("utf-8", "replace"))
            if match:
                return ClusterInfo(match.group(1), snap.push_time_ms, snap.series)
    return None


def rejects_by_reason(counter: Counter) -> dict[str, int]:
    """The samples of ``telemeter_upload_rejects_total``, as reason -> count."""
    out: dict[str, int] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name == metric.name + "_total":
                out[sample.labels.get("reason", "")] = int(sample.value)
    return out


async def load_clusters(rt: Runtime, *, now_ms: int) -> list[ClusterInfo]:
    """The clusters of the ranges this pod serves now, as ``/federate`` would serve them."""
    values = await rt.store.load_snapshots(sorted(rt.ring.owned_ranges()), now_ms=now_ms)
    oldest = now_ms - int(rt.settings.ttl * 1000)
    clusters: list[ClusterInfo] = []
    for value in values:
        try:
            snap = snapshot.decode(value)
        except snapshot.CorruptSnapshot:
            continue  # /federate counts and logs these; the page need not repeat it
        if snap.push_time_ms < oldest:
            continue
        info = cluster_info(snap, partition_label=rt.settings.partition_label)
        if info is not None:
            clusters.append(info)
    return clusters


async def status(rt: Runtime) -> HTMLResponse:
    """The ``/status`` answer of a running server (mount it on the internal app)."""
    now_ms = int(time.time() * 1000)
    view = await rt.ring.debug_view()
    error = None
    try:
        clusters = await load_clusters(rt, now_ms=now_ms)
    except StoreUnavailable as exc:
        log.warning("status page without clusters error=%s", exc)
        clusters, error = [], f"clusters unavailable: {exc}"
    page = render_status(
        view, clusters, rejects_by_reason(rt.metrics.rejects), now_ms=now_ms, error=error
    )
    return HTMLResponse(
        page,
        headers={"Cache-Control": "no-store", "Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


# ----- rendering (pure) ----------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _seconds(value: object) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "-"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def member_colours(names: Iterable[str]) -> dict[str, str]:
    """A colour per member, from its rank among the sorted names (the same on every pod)."""
    return {
        name: f"hsl({(i * GOLDEN_ANGLE) % 360:.0f} 65% 48%)"
        for i, name in enumerate(sorted(set(names)))
    }


def slot_owners(view: Mapping[str, Any]) -> list[str]:
    """The assigned member of every range (``UNASSIGNED`` where the assignment has none)."""
    owners = [UNASSIGNED] * RANGES
    for member, ranges in view.get("assignment", {}).items():
        for range_id in ranges:
            if 0 <= int(range_id) < RANGES:
                owners[int(range_id)] = str(member)
    return owners


def _runs(owners: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive ranges with one owner, as (owner, first range, range count)."""
    runs: list[tuple[str, int, int]] = []
    for range_id, owner in enumerate(owners):
        if runs and runs[-1][0] == owner:
            runs[-1] = (owner, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((owner, range_id, 1))
    return runs


def _bar(
    element_id: str,
    runs: Sequence[tuple[str, int, int]],
    colours: Mapping[str, str],
    *,
    label: str,
    css: str = "bar",
) -> str:
    rects = []
    for owner, first, count in runs:
        start, slots = first * SLOTS_PER_RANGE, count * SLOTS_PER_RANGE
        fill = colours.get(owner, UNASSIGNED_COLOUR)
        rects.append(
            f'<rect x="{start}" y="0" width="{slots}" height="1" fill="{_e(fill)}" '
            f'data-member="{_e(owner)}" data-slots="{slots}">'
            f"<title>{_e(owner)}: slots {start}-{start + slots - 1}</title></rect>"
        )
    return (
        f'<svg id="{element_id}" class="{css}" viewBox="0 0 {SLOTS} 1" preserveAspectRatio="none" '
        f'role="img" aria-label="{_e(label)}">{"".join(rects)}</svg>'
    )


def _members_table(
    view: Mapping[str, Any], owners: Sequence[str], colours: Mapping[str, str]
) -> str:
    me = str(view.get("name", ""))
    known = {str(m.get("name", "")): m for m in view.get("members", [])}
    counts: dict[str, int] = {}
    for owner in owners:
        counts[owner] = counts.get(owner, 0) + 1
    names = sorted(set(known) | (set(counts) - {UNASSIGNED}))
    rows = []
    for name in names:
        member = known.get(name, {})
        slots = counts.get(name, 0) * SLOTS_PER_RANGE
        you = ' <span class="you">this pod</span>' if name == me else ""
        lease = _seconds(member.get("lease_expires_in_s")) if member else "gone"
        rows.append(
            f'<tr class="member" data-member="{_e(name)}" data-slots="{slots}">'
            f'<td><span class="swatch" style="background:{_e(colours.get(name, ""))}"></span></td>'
            f"<td><code>{_e(name)}</code>{you}</td>"
            f'<td class="num">{lease}</td>'
            f'<td class="num">{_seconds(member.get("seen_for_s"))}</td>'
            f'<td class="num">{counts.get(name, 0)}</td><td class="num">{slots}</td></tr>'
        )
    free = counts.get(UNASSIGNED, 0)
    if free:
        rows.append(
            f'<tr class="unassigned" data-member="{UNASSIGNED}" '
            f'data-slots="{free * SLOTS_PER_RANGE}">'
            f'<td><span class="swatch" style="background:{UNASSIGNED_COLOUR}"></span></td>'
            f'<td>{UNASSIGNED}</td><td></td><td></td><td class="num">{free}</td>'
            f'<td class="num">{free * SLOTS_PER_RANGE}</td></tr>'
        )
    total = sum(counts.values()) * SLOTS_PER_RANGE
    return (
        '<table id="members"><thead><tr><th></th><th>member</th><th>lease expires in</th>'
        "<th>seen for</th><th>ranges</th><th>slots</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody>"
        f"<tfoot><tr><td></td><th>{len(names)} member(s)</th><td></td><td></td>"
        f'<td class="num">{sum(counts.values())}</td>'
        f'<td class="num" id="slots-total">{total}</td></tr></tfoot></table>'
    )


def _clusters_table(clusters: Sequence[ClusterInfo], now_ms: int | None) -> str:
    if not clusters:
        return '<p id="clusters" class="empty">This pod serves no cluster right now.</p>'
    latest = sorted(clusters, key=lambda c: (-c.push_time_ms, c.cluster_id))
    rows = []
    for info in latest[:MAX_CLUSTER_ROWS]:
        age = _seconds((now_ms - info.push_time_ms) / 1000) if now_ms is not None else "-"
        rows.append(
            f'<tr class="cluster" data-cluster="{_e(info.cluster_id)}" '
            f'data-series="{info.series}"><td><code>{_e(info.cluster_id)}</code></td>'
            f'<td>{_utc(info.push_time_ms)}</td><td class="num">{age}</td>'
            f'<td class="num">{info.series}</td></tr>'
        )
    more = len(latest) - MAX_CLUSTER_ROWS
    note = f"<p>{more} older cluster(s) not shown.</p>" if more > 0 else ""
    return (
        f'<table id="clusters" data-count="{len(clusters)}"><thead><tr><th>cluster</th>'
        "<th>last push</th><th>age</th><th>series</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{note}"
    )


def _rejects_table(rejects: Mapping[str, int]) -> str:
    if not rejects:
        return '<p id="rejects" class="empty">No upload refused since this pod started.</p>'
    rows = "".join(
        f'<tr class="reject" data-reason="{_e(reason)}" data-count="{count}">'
        f'<td><code>{_e(reason)}</code></td><td class="num">{count}</td></tr>'
        for reason, count in sorted(rejects.items(), key=lambda item: (-item[1], item[0]))
    )
    return (
        '<table id="rejects"><thead><tr><th>reason</th><th>uploads refused</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:75em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}
th,td{padding:.25em .8em;text-align:left;border-bottom:1px solid #ddd}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:block;width:100%;height:2.2em;border:1px solid #999;shape-rendering:crispEdges}
.bar.held{height:.8em;margin-top:.3em}
.scale{display:flex;justify-content:space-between;color:#666;font-size:.85em}
.swatch{display:inline-block;width:1em;height:1em;border:1px solid #666;vertical-align:middle}
.you{background:#234;color:#fff;border-radius:.3em;padding:0 .4em;margin-left:.5em;font-size:.8em}
.error{color:#a00}.empty{color:#666}.meta{color:#444}
"""


def render_status(
    view: Mapping[str, Any],
    clusters: Sequence[ClusterInfo],
    rejects: Mapping[str, int],
    *,
    now_ms: int | None = None,
    error: str | None = None,
) -> str:
    """The status page from a ``/debug/ring`` view, this pod's clusters and its rejects.

    Pure: ``now_ms`` (for the clusters' ages) and ``error`` (a problem to show) are passed in.
    """
    name = str(view.get("name", ""))
    owners = slot_owners(view)
    colours = member_colours(
        [str(m.get("name", "")) for m in view.get("members", [])]
        + [o for o in owners if o != UNASSIGNED]
    )
    held = set(view.get("ranges", []))
    held_runs = _runs([name if r in held else UNASSIGNED for r in range(RANGES)])
    ready = "yes" if view.get("ready") else "no"
    meta = (
        f"ready: <b>{ready}</b> · serving {int(view.get('slots', 0))} slots now · heartbeat "
        f"{_seconds(view.get('heartbeat_s'))} · lease {_seconds(view.get('lease_s'))} · "
        f"assignment version {_e(view.get('assignment_version', '-'))} · last heartbeat "
        f"{_seconds(view.get('last_heartbeat_age_s'))} ago"
    )
    grace = view.get("grace_s")
    if isinstance(grace, int | float) and grace > 0:
        meta += f" · <b>failover grace {_seconds(grace)}</b>"
    problem = f'<p class="error">{_e(error)}</p>' if error else ""
    quarter = SLOTS // 4
    scale = "".join(f"<span>{i * quarter}</span>" for i in range(4)) + f"<span>{SLOTS}</span>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>telemeter ring: {_e(name)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Ring <code>{_e(view.get('namespace', ''))}</code> seen from "
        f'<code id="pod">{_e(name)}</code></h1><p class="meta">{meta}</p>{problem}'
        "<h2>Hash slots by assigned member</h2>"
        + _bar("slot-bar", _runs(owners), colours, label="hash slots coloured by assigned member")
        + _bar("held-bar", held_runs, colours, label="slots this pod serves now", css="bar held")
        + f'<div class="scale">{scale}</div>'
        '<p class="meta">Upper bar: the assignment (every pod follows it). Lower bar: the slots '
        "whose lease this pod holds now. Lease deadlines are as of the last heartbeat.</p>"
        "<h2>Members</h2>"
        + _members_table(view, owners, colours)
        + f"<h2>Clusters served by this pod ({len(clusters)})</h2>"
        + _clusters_table(clusters, now_ms)
        + "<h2>Uploads refused by this pod, by reason</h2>"
        + _rejects_table(rejects)
        + '<p class="meta">Machine-readable: <a href="debug/ring">/debug/ring</a> (JSON), '
        '<a href="metrics">/metrics</a>.</p></body></html>'
    )
