"""The gateway `tragwerk gateway config` renders, run by a real HAProxy.

Behind it: scripted backends (tests/gateway.py) where the behaviour under test is
the gateway's own (retries, queueing, flood limit, closed paths), and real
`tragwerk api` processes where it is the pair's (an instance killed under load).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.gateway import Gateway, backends
from tests.processes import admin_token, kill_group, running, served_database
from tests.services import (
    free_port,
    require_program,
)
from tragwerk.scaling.gateway import GatewayConfig, Server

PROBLEM = "application/problem+json"


@pytest.fixture
def haproxy() -> str:
    return require_program("haproxy", "apt-get install haproxy")


def config(tmp: Path, servers: list[Server], **kw: object) -> GatewayConfig:
    values: dict[str, object] = {
        "bind": Server("127.0.0.1", free_port()),
        "stats": Server("127.0.0.1", free_port()),
        "socket": str(tmp / "haproxy.sock"),
        "check_interval_seconds": 0.2,
        **kw,
    }
    return GatewayConfig(servers, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_rendered_configurations_are_valid(haproxy: str, tmp_path: Path, count: int) -> None:
    servers = [Server(f"10.0.0.{i}", 8000) for i in range(1, count + 1)]
    variants = [
        config(tmp_path, servers),
        config(tmp_path, servers, internal_networks=("10.9.0.0/16", "fd00::/8"), stats=None),
        config(tmp_path, servers, expose_ops=True, flood_rate=50, maxconn_per_server=8),
    ]
    for variant in variants:
        checked = Gateway(haproxy, tmp_path, variant).check()
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "ALERT" not in checked.stderr


def test_gets_are_retried_elsewhere_but_a_post_is_never_sent_twice(
    haproxy: str, tmp_path: Path
) -> None:
    """One backend drops every request without answering (it crashed mid-request)."""
    with backends(lambda _m, _p: None, lambda _m, _p: (200, b"{}", 0.0)) as (broken, healthy):
        gw_config = config(tmp_path, [broken.server, healthy.server])
        with Gateway(haproxy, tmp_path, gw_config) as gw, httpx.Client(base_url=gw.url) as client:
            gets = [client.get(f"/v1/cases/{i}").status_code for i in range(20)]
            posts = [_post_status(client) for _ in range(20)]
    assert gets == [200] * 20  # every GET that met the broken one went on to the other
    assert broken.count("GET") >= 1
    # A POST that reached the broken backend failed rather than being repeated.
    assert broken.count("POST") >= 1
    assert broken.count("POST") + healthy.count("POST") == 20
    # Each of those failed, as a 502 or a connection closed unanswered; none repeated.
    assert len([s for s in posts if s in (502, 0)]) == broken.count("POST")
    assert posts.count(200) == healthy.count("POST")


def _post_status(client: httpx.Client) -> int:
    try:
        return client.post("/v1/cases", json={}).status_code
    except httpx.TransportError:
        return 0


def test_a_request_queued_past_the_queue_timeout_gets_a_503_problem(
    haproxy: str, tmp_path: Path
) -> None:
    with backends(lambda _m, _p: (200, b"{}", 2.0)) as (slow,):
        gateway_config = config(
            tmp_path, [slow.server], maxconn_per_server=1, queue_timeout_seconds=0.3
        )
        with Gateway(haproxy, tmp_path, gateway_config) as gw, ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.get, gw.url + "/v1/cases/1", timeout=10)
            time.sleep(0.2)
            second = pool.submit(httpx.get, gw.url + "/v1/cases/2", timeout=10).result()
            assert first.result().status_code == 200
    assert second.status_code == 503
    assert second.headers["content-type"] == PROBLEM
    assert second.json()["type"].endswith("/gateway-overloaded")
    assert second.headers["retry-after"] == "1"
    assert slow.count("GET") == 1  # the queued one never reached the instance


def test_floods_from_one_address_get_429_and_ops_paths_are_closed(
    haproxy: str, tmp_path: Path
) -> None:
    with backends(lambda _m, _p: (200, b"{}", 0.0)) as (backend,):
        gw_config = config(tmp_path, [backend.server], flood_rate=10)
        with Gateway(haproxy, tmp_path, gw_config) as gw, httpx.Client(base_url=gw.url) as client:
            statuses = [client.get("/v1/roles").status_code for _ in range(15)]
            assert statuses[:10] == [200] * 10
            assert set(statuses[11:]) == {429}
            limited = client.get("/v1/roles")
            assert limited.headers["content-type"] == PROBLEM
            assert limited.headers["retry-after"] == "10"
    assert backend.count("GET") <= 11  # the flood stopped at the gateway

    with backends(lambda _m, _p: (200, b"{}", 0.0)) as (backend,):
        with Gateway(haproxy, tmp_path, config(tmp_path, [backend.server])) as gw:
            for path in ("/metrics", "/health/ready", "/v1/admin/limits"):
                r = httpx.get(gw.url + path)
                assert r.status_code == 404, path
                assert r.headers["content-type"] == PROBLEM
            forged = httpx.get(gw.url + "/v1/roles", headers={"X-Forwarded-For": "6.6.6.6"})
            assert forged.status_code == 200
        internal = config(tmp_path, [backend.server], internal_networks=("127.0.0.0/8",))
        with Gateway(haproxy, tmp_path, internal) as gw:
            assert httpx.get(gw.url + "/v1/admin/limits").status_code == 200
    assert backend.count("GET") == 2
    # The instance sees the address the gateway saw, never one the client wrote.
    assert set(backend.forwarded_for) == {"127.0.0.1"}


def test_an_instance_failing_readiness_gets_no_traffic_and_returns(
    haproxy: str, tmp_path: Path
) -> None:
    with backends(lambda _m, _p: (200, b"{}", 0.0), lambda _m, _p: (200, b"{}", 0.0)) as pair:
        first, second = pair
        with Gateway(haproxy, tmp_path, config(tmp_path, [first.server, second.server])) as gw:
            gw.wait_for("api1", "UP")
            first.ready = False
            gw.wait_for("api1", "DOWN", within=5)
            before = first.count("GET")
            for i in range(20):
                assert httpx.get(f"{gw.url}/v1/cases/{i}").status_code == 200
            assert first.count("GET") == before
            first.ready = True
            gw.wait_for("api1", "UP", within=5)


# --- real tragwerk instances ---------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    with served_database(tmp_path, "tragwerk_gateway") as url:
        yield url


def test_an_instance_killed_under_load_fails_no_get(
    haproxy: str, tmp_path: Path, database: str
) -> None:
    """Two `tragwerk api` behind the gateway; one is SIGKILLed (its whole process group)
    while four clients keep reading: every GET is answered, the dead one is taken out
    of rotation, and after a restart it is back."""
    token = admin_token(tmp_path, database, "gateway-admin@example.test")
    ports = [free_port(), free_port()]
    env = {
        "TRAGWERK_DATABASE_URL": database,
        "TRAGWERK_LOG_LEVEL": "warning",
        "TRAGWERK_TRUSTED_PROXIES": "127.0.0.1/32",
        "TRAGWERK_LIMIT_EXTERNAL": "1000000/minute",
    }
    servers = [Server("127.0.0.1", p) for p in ports]
    with (
        running(tmp_path, "api", env=env, port=ports[0]) as victim,
        running(tmp_path, "api", env=env, port=ports[1]),
        # One client address here: the per-address flood limit would stop the test.
        Gateway(haproxy, tmp_path, config(tmp_path, servers, flood_rate=10**6)) as gw,
    ):
        gw.wait_for("api1", "UP")
        gw.wait_for("api2", "UP")
        statuses: list[int] = []
        stop = threading.Event()

        def read() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as client:
                while not stop.is_set():
                    try:
                        statuses.append(client.get("/v1/cases?limit=5").status_code)
                    except httpx.HTTPError:
                        statuses.append(0)

        readers = [threading.Thread(target=read) for _ in range(4)]
        for reader in readers:
            reader.start()
        try:
            time.sleep(2)
            kill_group(victim)  # SIGKILL to the instance and its worker processes
            out_after = gw.wait_for("api1", "DOWN", within=10)
            time.sleep(2)
        finally:
            stop.set()
            for reader in readers:
                reader.join()
        with running(tmp_path, "api", env=env, port=ports[0]):
            gw.wait_for("api1", "UP", within=15)
    failed = [s for s in statuses if s != 200]
    assert len(statuses) > 100
    assert failed == [], f"{len(failed)} of {len(statuses)} GETs failed: {set(failed)}"
    assert out_after < 3  # two failed checks 0.2 s apart, plus the passive ones


def test_the_gateway_drains_an_instance_without_failing_a_request(
    haproxy: str, tmp_path: Path
) -> None:
    """The runtime API's drain: no new requests go to the drained instance, the ones
    it is serving finish."""
    with backends(lambda _m, _p: (200, b"{}", 0.3), lambda _m, _p: (200, b"{}", 0.0)) as pair:
        first, second = pair
        gw_config = config(tmp_path, [first.server, second.server])
        with Gateway(haproxy, tmp_path, gw_config) as gw:
            gw.wait_for("api1", "UP")
            with ThreadPoolExecutor(8) as pool:
                running_requests = [
                    pool.submit(httpx.get, f"{gw.url}/v1/cases/{i}", timeout=10) for i in range(8)
                ]
                time.sleep(0.1)
                assert gw.runtime("set server api/api1 state drain").strip() == ""
                assert all(f.result().status_code == 200 for f in running_requests)
            before = first.count("GET")
            for i in range(10):
                assert httpx.get(f"{gw.url}/v1/cases/{i}").status_code == 200
            assert first.count("GET") == before
            assert gw.server_states()["api1"] == "DRAIN"
            gw.runtime("set server api/api1 state ready")
            gw.wait_for("api1", "UP")
