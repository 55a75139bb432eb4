"""deploy/kubernetes: each kustomization renders, and every object it renders is valid.

No cluster here: `kubectl kustomize` renders offline, kubernetes-validate checks each
object against the Kubernetes schemas of one version, strictly (unknown fields fail).
KEDA's ScaledObject is a custom resource those schemas do not know: it is checked
against the fields KEDA documents for its postgresql trigger, and its query is the
code's lag query, run here on a real database.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes_validate
import pytest
import yaml

from tests.services import require_program
from tragwerk.domain.queue_scaling import DEFAULT_BUDGETS
from tragwerk.store.queries.jobs import keda_lag_query

ROOT = Path(__file__).parent.parent.parent
PROFILE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.32"  # the version the manifests are written for (deployment.md)
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
DIRECTORIES = sorted(p.parent for p in PROFILE.rglob("kustomization.yaml"))


def _render(directory: Path) -> list[dict[str, Any]]:
    kubectl = require_program("kubectl", "kubectl (its `kustomize` renders offline)")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def test_there_is_a_base_and_an_overlay() -> None:
    assert [d.relative_to(PROFILE).as_posix() for d in DIRECTORIES] == [
        "base",
        "overlays/example",
    ]


@pytest.mark.parametrize("directory", DIRECTORIES, ids=lambda d: d.relative_to(PROFILE).as_posix())
def test_every_rendered_object_is_valid(directory: Path) -> None:
    objects = _render(directory)
    kinds = {obj["kind"] for obj in objects}
    assert {
        "Deployment", "Job", "Service", "Ingress", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "Secret", "ScaledObject",
    } <= kinds  # fmt: skip
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")


@pytest.mark.parametrize("directory", DIRECTORIES, ids=lambda d: d.relative_to(PROFILE).as_posix())
def test_pods_are_probed_bounded_and_unprivileged(directory: Path) -> None:
    objects = _render(directory)
    workloads = [o for o in objects if o["kind"] in ("Deployment", "Job")]
    assert len(workloads) == 3
    for obj in workloads:
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= container["resources"].keys()
            if obj["kind"] == "Deployment":
                assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
                assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    api = next(
        o for o in objects if o["metadata"]["name"] == "tragwerk-api" and o["kind"] == "Deployment"
    )
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    grace = int(config["TRAGWERK_DRAIN_SECONDS"]) + int(config["TRAGWERK_SHUTDOWN_GRACE_SECONDS"])
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    ingress = _one(objects, "Ingress")
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert "/metrics" not in paths
    assert not any(p == "/" or p.startswith("/health") for p in paths)


@pytest.mark.parametrize("directory", DIRECTORIES, ids=lambda d: d.relative_to(PROFILE).as_posix())
def test_the_keda_scaled_object_has_the_fields_keda_documents(directory: Path) -> None:
    objects = _render(directory)
    scaled = next(o for o in objects if o["kind"] == "ScaledObject")
    workers = next(
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "tragwerk-worker"
    )
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == workers["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert set(spec) <= {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
        "cooldownPeriod", "idleReplicaCount", "fallback", "advanced", "triggers",
    }  # fmt: skip
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql"
    metadata = trigger["metadata"]
    assert set(metadata) <= {
        "query", "targetQueryValue", "activationTargetQueryValue", "connectionFromEnv",
        "host", "port", "userName", "passwordFromEnv", "dbName", "sslmode",
    }  # fmt: skip
    float(metadata["targetQueryValue"])  # KEDA takes it as a string holding a number
    float(metadata["activationTargetQueryValue"])
    # The connection comes from an environment variable the worker container has.
    container = workers["spec"]["template"]["spec"]["containers"][0]
    secret_name = next(e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e)
    secret = next(
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == secret_name
    )
    assert metadata["connectionFromEnv"] in {
        **secret.get("data", {}),
        **secret.get("stringData", {}),
    }
    assert " ".join(metadata["query"].split()) == keda_lag_query(DEFAULT_BUDGETS)


async def test_the_keda_query_returns_one_integer(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(keda_lag_query(DEFAULT_BUDGETS))
    finally:
        await conn.close()
    assert len(rows) == 1
    assert len(rows[0]) == 1
    assert isinstance(rows[0][0], int)
    assert rows[0][0] >= 0
