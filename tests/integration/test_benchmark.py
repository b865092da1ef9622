"""`telemeter-benchmark` against a real server: a few uploads, then its summary and metrics."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.benchmark import BenchmarkConfig, PayloadPool, Summary, run_benchmark
from dev.launch import ServerHandle, start_server
from dev.ports import free_port
from telemeter import snappy
from telemeter.delimited import read_families
from telemeter.textparse import parse_text
from tests.conftest import RedisClusterHandle
from tests.support import shared_file

pytestmark = pytest.mark.integration

CLUSTER_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_payload_pool_patches_labels_into_randomized_bodies() -> None:
    text = shared_file("upstream", "timeseries.txt").read_bytes()
    base = parse_text(text)
    pool = PayloadPool(base, variants=4, spread_s=60.0, rng=random.Random(7))
    body = pool.body({"_id": CLUSTER_ID})
    families = read_families(snappy.decode_framed(body, max_size=1 << 22), max_families=100)
    metrics = [m for f in families for m in f.metric]
    assert len(metrics) == pool.series == 232
    assert all({(p.name, p.value) for p in m.label} >= {("_id", CLUSTER_ID)} for m in metrics)
    for family in families:  # the server refuses decreasing timestamps within a family
        stamps = [m.timestamp_ms for m in family.metric]
        assert stamps == sorted(stamps)
    originals = [m.untyped.value for f in base for m in f.metric]
    values = [m.untyped.value for m in metrics]
    assert values != originals
    assert all(0 <= v <= o for v, o in zip(values, originals, strict=True) if o >= 0)


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """One server with the default rate limit (one push per cluster per 4m30s)."""
    handle = start_server(
        redis_url=redis_cluster.url,
        workdir=tmp_path_factory.mktemp("bench-server"),
        name="bench",
        shared_key=signing_key,
    )
    yield handle
    handle.process.stop()


def test_cli_pushes_and_summarizes(server: ServerHandle) -> None:
    metrics_file = shared_file("upstream", "timeseries.txt")
    argv = [
        sys.executable, "-m", "client.benchmark",
        "--to", server.external, "--to-token", "a", "--metrics-file", str(metrics_file),
        "--workers", "4", "--interval", "300ms", "--ramp-up", "0s", "--uploads", "8",
        "--listen", "", "--json", "--progress", "never",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    # Every worker is a new cluster: its first push is accepted, its second one rate limited.
    assert summary["attempts"] == 8
    assert summary["accepted"] == 4
    assert summary["statuses"] == {"200": 4, "429": 4}
    assert summary["authorizations"] == {"200": 4}
    assert summary["series_per_upload"] == 232
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["uploads_per_s"] > 0


def test_run_serves_its_metrics_while_it_runs(server: ServerHandle) -> None:
    metrics_file = shared_file("upstream", "timeseries.txt")
    port = free_port()
    config = BenchmarkConfig(
        to_upload=server.external + "/upload",
        to_auth=server.external + "/authorize",
        token="a",
        metrics_text=metrics_file.read_bytes(),
        workers=3,
        interval_s=0.1,
        ramp_up_s=0.0,
        uploads=6,
        error_wait_s=0.1,
        seed=3,
    )

    async def run_and_scrape() -> tuple[Summary, str]:
        task = asyncio.create_task(run_benchmark(config, listen=f"127.0.0.1:{port}"))
        scraped = ""
        async with httpx.AsyncClient() as client:
            while not task.done() and 'status="429"' not in scraped:
                try:
                    scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.HTTPError:
                    await asyncio.sleep(0.01)
        return await task, scraped

    summary, scraped = asyncio.run(asyncio.wait_for(run_and_scrape(), 30))
    assert summary.accepted == 3  # each cluster's first push
    assert summary.statuses == {"200": 3, "429": 3}
    assert 'benchmark_uploads_total{status="200"}' in scraped
    assert "forwarded_samples_total" in scraped
