"""Alerts to the support team: the rules in deploy/prometheus, checked and unit-tested
with promtool, and run for real: Prometheus scrapes a real `tragwerk api` and `tragwerk
worker`, Alertmanager (deploy/alertmanager's routing) sends to the team's webhook and
mailbox; the worker is killed, one alert arrives, then one resolved notice.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import SERVICE_PG_ADMIN_URL, create_database, drop_database
from tests.processes import running, start
from tests.receivers import SmtpSink, WebhookReceiver
from tests.services import (
    SERVICE_PG_HOST,
    SERVICE_PG_PORT,
    free_port,
    require_program,
    require_service,
)
from tragwerk.api.server_state import ServerState, ServerStateCollector
from tragwerk.jobs.worker import Worker
from tragwerk.monitoring.metrics import Metrics
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
INSTALL = "apt-get install prometheus prometheus-alertmanager"


def promtool(*args: str, cwd: Path | None = None) -> str:
    tool = require_program("promtool", INSTALL)
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 16 rules found" in promtool("check", "rules", str(RULES))
    out = promtool("test", "rules", "alerts.test.yml", cwd=RULES.parent)
    assert "SUCCESS" in out


def test_the_example_configurations_are_valid() -> None:
    promtool("check", "config", str(PROMETHEUS_CONFIG))
    amtool = require_program("amtool", INSTALL)
    check = [amtool, "check-config", str(ALERTMANAGER_CONFIG)]
    done = subprocess.run(check, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_severity_a_summary_and_a_runbook_entry() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {f"#{m.lower()}" for m in re.findall(r"^## (Tragwerk\w+)", runbook, re.M)}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            link = rule["annotations"]["runbook"]
            assert link == f"docs/runbook.md#{rule['alert'].lower()}", rule["alert"]
            assert link.removeprefix("docs/runbook.md") in anchors, f"no runbook entry: {link}"


def exported_names(text: str) -> set[str]:
    """Series names a /metrics text can carry, from its TYPE lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        suffixes = {"histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        names |= {name + suffix for suffix in suffixes}
    return names


async def all_exported(api: Any, database_url: str) -> set[str]:
    """Every series name an API process and a worker (with SMTP) export."""
    exported = exported_names((await api.client.get("/metrics")).text)
    # A server's own figures (respawns), shown when the app is served by `tragwerk api`.
    server = ServerState.create(workers=1)
    try:
        registry = CollectorRegistry()
        registry.register(ServerStateCollector(server))
        exported |= exported_names(generate_latest(registry).decode())
    finally:
        server.remove()
    with SmtpSink() as smtp:
        settings = Settings(database_url=database_url, smtp_url=smtp.url, worker_port=None)
        engine = create_engine(database_url, pool_size=2)
        worker = Worker(settings, database_url, engine, Metrics())
        await worker.start()
        try:
            exported |= exported_names(worker.metrics.render().decode())
            states = re.findall(
                r'tragwerk_module_up\{module="(\w+)"\}', worker.metrics.render().decode()
            )
        finally:
            await worker.stop()
            await engine.dispose()
    # The modules the module rules name are ones that report a state.
    assert {"worker", "smtp"} <= set(states)
    return exported


async def test_the_rules_name_only_metrics_tragwerk_exports(api: Any, database_url: str) -> None:
    exported = await all_exported(api, database_url)
    named: set[str] = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            named |= set(re.findall(r"\btragwerk_[a-z_]+", rule["expr"]))
    assert named, "no tragwerk metric in the rules"
    assert named <= exported, f"not exported by tragwerk: {sorted(named - exported)}"


DASHBOARD = ROOT / "deploy" / "grafana" / "tragwerk.json"
PROMETHEUS_OWN = {"up", "ALERTS"}  # series Prometheus makes itself


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each panel's PromQL, wrapped as a recording rule, passes `promtool check rules`."""
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}", "expr": expr}
                    for i, (_title, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in promtool("check", "rules", str(path))


async def test_the_dashboard_names_only_metrics_tragwerk_exports(
    api: Any, database_url: str
) -> None:
    exported = await all_exported(api, database_url)
    for title, expr in dashboard_queries():
        names = set(re.findall(r"\b(tragwerk_[a-z_]+|up|ALERTS)\b(?=[{\[ )]|$)", expr))
        assert names, title
        assert names - PROMETHEUS_OWN <= exported, (title, sorted(names - exported))


# --- the live run ----------------------------------------------------------------------


def fast_rules(path: Path) -> Path:
    """alerts.yml with every `for:` at 2 s: the same conditions, in test time."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path.write_text(yaml.safe_dump(rules))
    return path


def prometheus_config(
    path: Path, api: int, worker: int, alertmanager: int, *, rules: bool = True
) -> Path:
    """deploy/prometheus's configuration for the test's instances; `rules=False` leaves
    the alert rules out (loaded by a reload once every target has been scraped)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(fast_rules(path.parent / "alerts.yml"))] if rules else []
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{alertmanager}"
    ]
    targets = {"tragwerk-api": f"127.0.0.1:{api}", "tragwerk-worker": f"127.0.0.1:{worker}"}
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]}
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(path: Path, smtp: SmtpSink, hooks: WebhookReceiver) -> Path:
    """deploy/alertmanager's routing, pointed at the test's mailbox and webhook."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["global"].update(
        smtp_smarthost=f"127.0.0.1:{smtp.port}", smtp_require_tls=False, smtp_hello="localhost"
    )
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = hooks.url(f"/{receiver['name']}")
        for mail in receiver["email_configs"]:
            mail["to"] = f"{receiver['name']}@example.test"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def served_database() -> Iterator[str]:
    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    url = asyncio.run(create_database(SERVICE_PG_ADMIN_URL, prefix="tragwerk_alerting"))
    try:
        yield url
    finally:
        asyncio.run(drop_database(SERVICE_PG_ADMIN_URL, url))


class Daemon:
    """Prometheus or Alertmanager in its own directory, stopped at the end."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def ready(self, url: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready: {url}\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def notifications(hooks: WebhookReceiver, alertname: str) -> list[tuple[str, str, str]]:
    """(receiver path, status, alert status) of every notification about `alertname`."""
    seen = []
    for received in list(hooks.received):
        body = json.loads(received.body)
        for alert in body["alerts"]:
            if alert["labels"]["alertname"] == alertname:
                seen.append((received.path, body["status"], alert["status"]))
    return seen


def wait_until(check: Any, within: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {within} s")


def test_a_killed_worker_alerts_the_support_team_once_then_resolves(
    tmp_path: Path, served_database: str
) -> None:
    prometheus = require_program("prometheus", INSTALL)
    alertmanager = require_program("prometheus-alertmanager", INSTALL)
    url = served_database
    migrate = start(tmp_path, "migrate", env={"TRAGWERK_DATABASE_URL": url})
    out, _ = migrate.communicate(timeout=60)
    assert migrate.returncode == 0, out
    api_port, worker_port, am_port, prom_port = (free_port() for _ in range(4))
    env = {"TRAGWERK_DATABASE_URL": url, "TRAGWERK_LOG_LEVEL": "warning"}
    worker_env = {**env, "TRAGWERK_WORKER_PORT": str(worker_port)}

    def start_worker() -> subprocess.Popen[str]:
        proc = start(tmp_path, "worker", env=worker_env, output=tmp_path / "worker.log")
        wait_until(lambda: _ok(f"http://127.0.0.1:{worker_port}/health/ready"), 60, "worker ready")
        return proc

    with (
        SmtpSink() as smtp,
        WebhookReceiver() as hooks,
        running(tmp_path, "api", env=env, port=api_port, output=tmp_path / "api.log"),
    ):
        (tmp_path / "am").mkdir()
        am = Daemon(
            [alertmanager, f"--config.file={alertmanager_config(tmp_path / 'am.yml', smtp, hooks)}",
             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="],
            tmp_path / "alertmanager.log",
        )  # fmt: skip
        (tmp_path / "prom").mkdir()
        # Without rules at first: evaluated before the first scrapes, TragwerkNoWorker's
        # absent() would be pending from the start and, with `for` scaled to 2 s, fire
        # whenever the first scrape of the worker comes late (seen under load).
        config = prometheus_config(
            tmp_path / "prometheus.yml", api_port, worker_port, am_port, rules=False
        )
        prom = Daemon(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'prom'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s",
             "--web.enable-lifecycle"],
            tmp_path / "prometheus.log",
        )  # fmt: skip
        worker = start_worker()
        try:
            am.ready(f"http://127.0.0.1:{am_port}/-/ready")
            prom.ready(f"http://127.0.0.1:{prom_port}/-/ready")
            base = f"http://127.0.0.1:{prom_port}/api/v1"

            def all_up() -> bool:
                targets = httpx.get(f"{base}/targets").json()["data"]["activeTargets"]
                return len(targets) == 2 and all(t["health"] == "up" for t in targets)

            wait_until(all_up, 30, "both instances scraped")
            prometheus_config(tmp_path / "prometheus.yml", api_port, worker_port, am_port)
            httpx.post(f"http://127.0.0.1:{prom_port}/-/reload", timeout=10).raise_for_status()
            wait_until(
                lambda: httpx.get(f"{base}/rules").json()["data"]["groups"], 30, "rules loaded"
            )
            time.sleep(3)  # a few evaluations with everything up: nothing may fire
            assert not hooks.received, [r.body for r in hooks.received]

            worker.send_signal(signal.SIGKILL)
            worker.wait()
            to_alert = wait_until(
                lambda: notifications(hooks, "TragwerkInstanceDown"), 60, "the alert"
            )
            wait_until(lambda: smtp.messages, 30, "the alert email")
            time.sleep(5)  # the group repeats only after its repeat interval: no second one
            fired = notifications(hooks, "TragwerkInstanceDown")
            assert fired == [("/support-team-page", "firing", "firing")]
            firing_mail = [m for m in smtp.messages if "InstanceDown" in str(m["Subject"])]
            assert len(firing_mail) == 1
            assert str(firing_mail[0]["To"]) == "support-team-page@example.test"
            assert str(firing_mail[0]["Subject"]).startswith("[FIRING:1] TragwerkInstanceDown")

            worker = start_worker()
            to_resolve = wait_until(
                lambda: len(notifications(hooks, "TragwerkInstanceDown")) >= 2, 60, "resolved"
            )
            time.sleep(3)
            assert notifications(hooks, "TragwerkInstanceDown") == [
                ("/support-team-page", "firing", "firing"),
                ("/support-team-page", "resolved", "resolved"),
            ]
            wait_until(
                lambda: any("RESOLVED" in str(m["Subject"]) for m in smtp.messages), 30, "mail"
            )
            alert = next(
                a
                for r in hooks.received
                for a in json.loads(r.body)["alerts"]
                if a["labels"]["alertname"] == "TragwerkInstanceDown"
            )
            assert alert["labels"]["instance"] == f"127.0.0.1:{worker_port}"
            assert alert["labels"]["severity"] == "critical"
            assert alert["annotations"]["runbook"] == "docs/runbook.md#tragwerkinstancedown"
            others = {
                (a["labels"]["alertname"], a["status"])
                for r in hooks.received
                for a in json.loads(r.body)["alerts"]
            }
            # With no worker left, TragwerkNoWorker fires beside it, and nothing else.
            assert {name for name, _ in others} == {"TragwerkInstanceDown", "TragwerkNoWorker"}
            print(
                f"\nalert {to_alert:.1f} s after the SIGKILL (scrape and evaluation 1 s, for 2 s,"
                f" group_wait 1 s); resolved {to_resolve:.1f} s after the worker was back"
            )
        finally:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=30)
            prom.stop()
            am.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
