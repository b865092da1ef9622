"""The ring status page (``/status`` on the internal listener): rendering, and a real browser.

The browser test starts three real server processes sharing one ring on the session's Redis
Cluster, pushes a cluster to the pod that serves it, makes that pod refuse two uploads, then
loads the pod's ``/status`` in headless Chromium. It checks what the browser's DOM shows (three
members, slot ownership adding up to 16384, the cluster with its series, the rejects by reason)
and keeps a screenshot and the DOM under ``tmp/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from app import keys, snapshot
from app.errors import InvalidToken, UnsupportedMediaType
from app.keys import RANGES, SLOTS, SLOTS_PER_RANGE, cluster_range
from app.status_page import (
    ClusterInfo,
    cluster_info,
    rejects_by_reason,
    render_status,
)
from dev.launch import ServerHandle
from telemeter.textparse import parse_text
from tests.support import authorize, encode_upload, upload

ARTIFACTS = Path(__file__).resolve().parents[2] / "tmp" / "artifacts"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip
RING_TIMES = ("--ring-heartbeat", "0.3s", "--ring-lease", "2s")
PUSHED_TEXT = b"""# TYPE up gauge
up{job="demo",instance="a"} 1
up{job="demo",instance="b"} 0
# TYPE demo_info gauge
demo_info{version="1"} 1
"""
PUSHED_SERIES = 3


class _Elements(HTMLParser):
    """Every element's tag and attributes, plus the text of the element with id ``pod``."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.pod = ""
        self._in_pod = False
        self._svg = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "svg":
            self._svg = values.get("id", "")
        elif self._svg:
            values["in-svg"] = self._svg  # which bar a rect belongs to
        self.elements.append((tag, values))
        self._in_pod = values.get("id") == "pod"

    def handle_endtag(self, tag: str) -> None:
        self._in_pod = False
        if tag == "svg":
            self._svg = ""

    def handle_data(self, data: str) -> None:
        if self._in_pod:
            self.pod += data

    def having(self, attribute: str, *, tag: str | None = None) -> list[dict[str, str]]:
        """Attributes of the elements carrying ``attribute`` (of one tag when given)."""
        return [a for t, a in self.elements if attribute in a and (tag is None or t == tag)]


def _parse(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


def _view(assignment: dict[str, list[int]], *, name: str = "pod-a") -> dict[str, Any]:
    members = [
        {"name": m, "lease_expires_in_s": 9.5, "seen_for_s": 30.0, "assigned_ranges": len(r)}
        for m, r in assignment.items()
    ]
    return {
        "name": name,
        "namespace": "telemeter-ring",
        "ready": True,
        "heartbeat_s": 2.0,
        "lease_s": 10.0,
        "ranges": assignment.get(name, []),
        "slots": len(assignment.get(name, [])) * SLOTS_PER_RANGE,
        "assignment": assignment,
        "members": members,
        "assignment_version": 7,
        "last_heartbeat_age_s": 0.4,
        "grace_s": 0.0,
    }


# ----- rendering -------------------------------------------------------------------------------


def test_slots_of_members_and_unassigned_ranges_add_up_to_every_slot() -> None:
    assignment = {"pod-a": list(range(0, 100)), "pod-b": list(range(100, 200))}
    page = _parse(render_status(_view(assignment), [], {}))
    rows = {a["data-member"]: int(a["data-slots"]) for a in page.having("data-slots", tag="tr")}
    assert rows == {"pod-a": 100 * 64, "pod-b": 100 * 64, "(unassigned)": 56 * 64}
    bar = [a for a in page.having("data-slots", tag="rect") if a["in-svg"] == "slot-bar"]
    assert [(a["data-member"], a["x"]) for a in bar] == [
        ("pod-a", "0"),
        ("pod-b", str(100 * SLOTS_PER_RANGE)),
        ("(unassigned)", str(200 * SLOTS_PER_RANGE)),
    ]
    assert page.pod == "pod-a"


def test_dynamic_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    view = _view({evil: list(range(RANGES))}, name=evil)
    page = render_status(
        view, [ClusterInfo("c1", 1_700_000_000_000, 3)], {"<b>bad</b>": 2}, error="<i>oops</i>"
    )
    assert "<script>" not in page and "<b>bad</b>" not in page and "<i>oops</i>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bad&lt;/b&gt;" in page and "&lt;i&gt;oops&lt;/i&gt;" in page


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = render_status(_view({"pod-a": list(range(RANGES))}), [], {})
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert "http://" not in page and "https://" not in page and "url(" not in page


def test_cluster_info_comes_from_the_push_time_series() -> None:
    now_ms = 1_700_000_000_000
    value = snapshot.encode(
        now_ms,
        4,
        [
            ("up", 1, b'up{_id="cluster-9"} 1 1700000000000\n'),
            (snapshot.PUSH_TIME_FAMILY, 1, snapshot.push_time_lines("_id", "cluster-9", now_ms)),
        ],
    )
    info = cluster_info(snapshot.decode(value), partition_label="_id")
    assert info == ClusterInfo("cluster-9", now_ms, 4)
    assert cluster_info(snapshot.decode(value), partition_label="cluster") is None


def test_rejects_by_reason_reads_the_counter() -> None:
    counter = Counter("rejects", "test", ["reason"], registry=CollectorRegistry())
    counter.labels("TooLarge").inc(3)
    counter.labels("InvalidToken").inc()
    assert rejects_by_reason(counter) == {"TooLarge": 3, "InvalidToken": 1}


# ----- a real three-pod ring in a real browser --------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: scripts/bootstrap.sh installs it (apt chromium)")
    return path


def _settled(server: ServerHandle, members: int) -> dict[str, Any] | None:
    view: dict[str, Any] = httpx.get(server.internal + "/debug/ring", timeout=5).json()
    names = {m["name"] for m in view["members"]}
    if view["ready"] and len(names) == members and set(view["assignment"]) == names:
        return view
    return None


def _wait_settled(servers: list[ServerHandle], *, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        views = [_settled(s, len(servers)) for s in servers]
        if all(views):
            assert views[0] is not None
            return views[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"the ring did not settle on {len(servers)} members")
        time.sleep(0.2)


def _push(server: ServerHandle, cluster_id: str) -> None:
    now_ms = int(time.time()) * 1000
    families = parse_text(PUSHED_TEXT)
    for family in families:
        for metric in family.metric:
            metric.timestamp_ms = now_ms
            pair = metric.label.add()
            pair.name, pair.value = "_id", cluster_id
    answer = upload(server, authorize(server, cluster_id), encode_upload(families))
    assert answer.status_code == 200, answer.text


def test_status_page_of_a_three_pod_ring_in_chromium(
    start_servers: Callable[..., ServerHandle],
) -> None:
    chromium = _chromium()
    ring = f"status-{uuid.uuid4().hex[:8]}"
    servers = [
        start_servers(name, ring=ring, ready=False, extra_args=list(RING_TIMES))
        for name in ("pod-a", "pod-b", "pod-c")
    ]
    view = _wait_settled(servers)
    pod = next(s for s in servers if s.name == view["name"])
    held = set(view["ranges"])
    cluster_id = next(c for c in (f"cluster-{i}" for i in range(1000)) if cluster_range(c) in held)
    _push(pod, cluster_id)
    no_token = httpx.post(pod.external + "/upload", content=b"x")
    assert no_token.status_code == 401
    jwt = authorize(pod, cluster_id)
    wrong_type = upload(pod, jwt, b"x", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    url = f"{pod.internal}/status"
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, f"GET {url}: {answer.status_code} (is /status routed?)"
    assert answer.headers["content-type"].startswith("text/html")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [
            chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1100",
            f"--screenshot={screenshot}", "--dump-dom", url,
        ]  # fmt: skip
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    (ARTIFACTS / "status-page.html").write_text(run.stdout)
    assert screenshot.stat().st_size > 10_000  # a rendered page, not an empty picture

    page = _parse(run.stdout)
    assert page.pod == pod.name
    members = page.having("data-member", tag="tr")
    assert sorted(a["data-member"] for a in members) == sorted(view["assignment"])
    assert len(members) == 3 and all(int(a["data-slots"]) > 0 for a in members)
    assert sum(int(a["data-slots"]) for a in members) == SLOTS
    bar = [a for a in page.having("data-member", tag="rect") if a["in-svg"] == "slot-bar"]
    assert {a["data-member"] for a in bar} == set(view["assignment"])
    assert sum(int(a["data-slots"]) for a in bar) == SLOTS
    held_bar = [a for a in page.having("data-member", tag="rect") if a["in-svg"] == "held-bar"]
    assert (
        sum(int(a["data-slots"]) for a in held_bar if a["data-member"] == pod.name)
        == len(held) * SLOTS_PER_RANGE
    )
    clusters = {a["data-cluster"]: int(a["data-series"]) for a in page.having("data-cluster")}
    assert clusters[cluster_id] == PUSHED_SERIES + 1  # plus its push-time series
    # Other tests' clusters share the Redis Cluster: the page lists those of this pod's ranges.
    assert all(keys.cluster_range(other) in held for other in clusters)
    rejects = {a["data-reason"]: int(a["data-count"]) for a in page.having("data-reason")}
    assert rejects == {
        InvalidToken.reject_reason: 1,
        UnsupportedMediaType.reject_reason: 1,
    }
