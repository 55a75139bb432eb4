"""Three hosts behind the gateway, on one machine: spread, a host killed, a rolling restart.

Each host is a network namespace (tests/hosts.py) running `tragwerk api --workers 2`
and one `tragwerk worker`; PostgreSQL, Redis, the SMTP and webhook receivers and
HAProxy (from `tragwerk gateway config`) run on the bridge's address. Load comes from
wrk (reads) and two writer threads (case creations, each causing an email and a
webhook delivery). The figures each phase saw are printed (pytest -s shows them) and
are in docs/performance.md, "Several hosts behind the gateway".
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hosts import Cluster, require_root_and_ip, running_cluster, wrk
from tests.receivers import WebhookReceiver, eventually
from tests.services import require_program

CHECK_INTERVAL = 0.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_root_and_ip()
    haproxy = require_program("haproxy", "apt-get install haproxy")
    require_program("wrk", "apt-get install wrk")
    with running_cluster(haproxy, tmp_path_factory.mktemp("hosts"), 3, CHECK_INTERVAL) as built:
        yield built


class Writers:
    """Two threads creating cases (each: an email to the assignee, a webhook) through
    the gateway until stopped; statuses and the ids of the cases created."""

    def __init__(self, cluster: Cluster, threads: int = 2) -> None:
        self.cluster = cluster
        self.statuses: list[int] = []
        self.created: list[int] = []
        self.errors: list[str] = []  # what the client saw when no response came
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._write) for _ in range(threads)]

    def _write(self) -> None:
        body = {
            "title": "written under load",
            "location_id": self.cluster.location_id,
            "assignee_ids": [self.cluster.assignee_id],
        }
        with httpx.Client(
            base_url=self.cluster.url, headers=self.cluster.headers(), timeout=30
        ) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/cases", json=body)
                except httpx.HTTPError as exc:
                    self.statuses.append(0)
                    self.errors.append(repr(exc))
                    continue
                self.statuses.append(r.status_code)
                if r.status_code == 201:
                    self.created.append(r.json()["id"])
                time.sleep(0.03)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join()

    @property
    def failed(self) -> int:
        return sum(1 for s in self.statuses if s != 201)


class Reads:
    """wrk reading one case through the gateway, in a thread, for `seconds`."""

    def __init__(self, cluster: Cluster, seconds: float, connections: int = 16) -> None:
        self.result: dict[str, Any] = {}
        self._thread = threading.Thread(
            target=lambda: self.result.update(
                wrk(cluster.url, connections, seconds, cluster.token, "/v1/cases?limit=5")
            )
        )

    def __enter__(self) -> Reads:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._thread.join()


def _case_ids_delivered(receiver: WebhookReceiver) -> set[int]:
    return {json.loads(r.body)["case"]["id"] for r in list(receiver.received)}


def test_requests_are_spread_evenly(cluster: Cluster) -> None:
    before = cluster.served()
    result = wrk(cluster.url, 24, 8, cluster.token, "/v1/cases?limit=5")
    after = cluster.served()
    counts = {name: after[name] - before[name] for name in after}
    mean = sum(counts.values()) / len(counts)
    rps, failed = result["rps"], result["failed"]
    print(f"\nspread over 3 hosts: {counts}, {rps:.0f} requests/s, failed {failed}")
    assert result["failed"] == 0
    # leastconn gives each host requests as fast as it answers them, by design, and here
    # three hosts, PostgreSQL and wrk share two cores, so their speeds differ from run
    # to run (seen: within 3 % alone, up to 25 % in the full suite). What must hold: every
    # host takes a real share, none is starved or swamped.
    assert all(0.6 * mean <= n <= 1.4 * mean for n in counts.values()), counts


def test_a_host_killed_under_load(cluster: Cluster) -> None:
    """host2: every process SIGKILLed, then its link down; reads fail none, writes only
    those in flight on it; it leaves rotation within the check interval, its worker's
    jobs run elsewhere after the heartbeat timeout, no email or webhook is lost; it
    returns."""
    victim = cluster.network.hosts[1]
    # The minute around the failure: 30 s of load before it, 30 s after.
    with Reads(cluster, 60) as reads, Writers(cluster) as writers:
        time.sleep(30)
        killed_at = time.monotonic()
        cluster.network.kill(victim)
        cluster.network.link(victim, up=False)
        cluster.gateway.wait_for("api2", "DOWN", within=10)
        out_after = time.monotonic() - killed_at
        time.sleep(max(0.0, 29 - out_after))
    result = reads.result
    print(
        f"\nhost killed: reads {result['requests']} failed {result['failed']}; writes"
        f" {len(writers.statuses)} failed {writers.failed}"
        f" ({sorted(set(writers.statuses) - {201})}, {writers.errors});"
        f" out of rotation after {out_after:.2f} s"
    )
    assert result["failed"] == 0
    # A POST in flight on the killed host is lost to its client (502, or the connection
    # closed): the gateway never retries a request that may have been applied. Each
    # writer can lose that one, and the next on the connection the gateway closed
    # after it (seen: RemoteProtocolError "Server disconnected"); nothing else.
    assert writers.failed <= 2 * len(writers.threads), writers.errors
    assert set(writers.statuses) <= {0, 201, 502}, sorted(set(writers.statuses))
    assert out_after <= 3 * CHECK_INTERVAL + 1.0
    # Every case created got its webhook and its email, the dead worker's included.
    created = set(writers.created)
    asyncio.run(
        eventually(lambda: created <= _case_ids_delivered(cluster.receiver), within=90, every=0.5)
    )
    asyncio.run(eventually(lambda: len(set(cluster.smtp.message_ids())) >= len(created), within=90))
    cluster.network.link(victim, up=True)
    cluster.start_host(victim)
    back_after = cluster.gateway.wait_for("api2", "UP", within=30)
    print(f"host back in rotation {back_after:.2f} s after it was ready")


def test_a_rolling_restart_under_load_fails_no_request(cluster: Cluster) -> None:
    restarts = []
    with Reads(cluster, 60) as reads, Writers(cluster) as writers:
        time.sleep(2)
        for host in cluster.network.hosts:
            started = time.monotonic()
            server = f"api{host.index}"
            cluster.gateway.runtime(f"set server api/{server} state drain")
            deadline = time.monotonic() + 30
            while _in_flight(cluster, server) and time.monotonic() < deadline:
                time.sleep(0.1)
            api = host.procs["api"]
            api.terminate()  # SIGTERM: readiness fails, requests in flight finish
            _stopped(cluster, host, api, within=60)
            cluster.start_api(host)
            cluster.gateway.runtime(f"set server api/{server} state ready")
            cluster.gateway.wait_for(server, "UP", within=30)
            restarts.append(time.monotonic() - started)
    result = reads.result
    print(
        f"\nrolling restart: reads {result['requests']} failed {result['failed']}; writes"
        f" {len(writers.statuses)} failed {writers.failed}; restarts took"
        f" {', '.join(f'{s:.1f} s' for s in restarts)}"
    )
    assert result["failed"] == 0
    assert writers.failed == 0
    assert len(writers.statuses) > 50


def _stopped(cluster: Cluster, host: Any, api: Any, within: float) -> None:
    """The API process exited 0 within `within` seconds; if not, its log says why."""
    try:
        code = api.wait(timeout=within)
    except subprocess.TimeoutExpired:
        pids = [_describe(pid) for pid in cluster.network.pids(host)]
        log = (cluster.network.workdir / f"{host.name}-api.log").read_text()[-6000:]
        api.kill()
        raise AssertionError(
            f"{host.name}'s API did not stop within {within} s of SIGTERM; processes in"
            f" its namespace: {pids}; its log ends:\n{log}"
        ) from None
    assert code == 0, (cluster.network.workdir / f"{host.name}-api.log").read_text()[-6000:]


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[-80:]
        state = next(
            line
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("State:")
        )
    except (OSError, StopIteration):
        return f"{pid} (gone)"
    return f"{pid} {state.split(':', 1)[1].strip()} {cmd}"


def _in_flight(cluster: Cluster, server: str) -> int:
    text = cluster.gateway.runtime("show stat").lstrip("# ")
    for line in text.splitlines():
        fields = line.split(",")
        if fields[:2] == ["api", server]:
            return int(fields[4])  # scur
    return 0
