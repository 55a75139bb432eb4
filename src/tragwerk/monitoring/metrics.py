"""One Prometheus registry per process and the module reporters that write to it."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Buckets from 0.5 ms to 10 s: database operations and requests both land inside.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The process's registry with the module and HTTP metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.module_up = Gauge(
            "tragwerk_module_up",
            "1 while the module works, 0 while it is failing",
            ["module"],
            registry=self.registry,
        )
        self.operation_seconds = Histogram(
            "tragwerk_module_operation_seconds",
            "Duration of module operations",
            ["module", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.operation_errors = Counter(
            "tragwerk_module_errors",
            "Module operations that raised",
            ["module", "operation"],
            registry=self.registry,
        )
        # Events are counted in a plain dict and read at scrape time: a cache hit
        # happens on nearly every request, and a prometheus Counter takes a lock per inc.
        self.event_counts: dict[tuple[str, str], int] = {}
        self.registry.register(_EventCollector(self.event_counts))
        self.values = Gauge(
            "tragwerk_module_value",
            "Values a module reports when scraped (entries, age of the oldest entry)",
            ["module", "name"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "tragwerk_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "tragwerk_http_request_seconds",
            "HTTP request duration by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_in_flight = Gauge(
            "tragwerk_http_requests_in_flight",
            "HTTP requests being served",
            registry=self.registry,
        )

        self.jobs = JobMetrics(self.registry)

    def module(self, name: str) -> ModuleMonitor:
        return ModuleMonitor(self, name)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EventCollector(Collector):
    def __init__(self, counts: dict[tuple[str, str], int]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "tragwerk_module_events",
            "Notable events of a module (cache hits and misses, invalidations, reconnects)",
            labels=["module", "event"],
        )
        for (module, event), value in sorted(self._counts.items()):
            family.add_metric([module, event], value)
        yield family


class ModuleMonitor:
    """A `ModuleReporter` that writes one module's figures to the registry."""

    def __init__(self, metrics: Metrics, module: str) -> None:
        self._metrics = metrics
        self._module = module
        self._up = metrics.module_up.labels(module)
        self._up.set(1)
        self._timers: dict[str, tuple[Histogram, Counter]] = {}
        self._counts = metrics.event_counts

    def _children(self, operation: str) -> tuple[Histogram, Counter]:
        children = self._timers.get(operation)
        if children is None:
            children = (
                self._metrics.operation_seconds.labels(self._module, operation),
                self._metrics.operation_errors.labels(self._module, operation),
            )
            self._timers[operation] = children
        return children

    def operation(self, name: str) -> AbstractContextManager[None]:
        return self._operation(name)

    @contextmanager
    def _operation(self, name: str) -> Iterator[None]:
        seconds, errors = self._children(name)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    def set_healthy(self, healthy: bool) -> None:
        self._up.set(1 if healthy else 0)

    def count(self, event: str, amount: int = 1) -> None:
        key = (self._module, event)
        counts = self._counts
        counts[key] = counts.get(key, 0) + amount

    def observe(self, name: str, read: Callable[[], float]) -> None:
        self._metrics.values.labels(self._module, name).set_function(read)


# Job durations reach from a no-op (well under a millisecond) to a slow webhook.
JOB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class JobMetrics(Collector):
    """Per job kind: outcomes, duration, running; queue figures refreshed by the worker.

    Counted in plain dicts and read at scrape time: a worker runs thousands of jobs a
    second, and prometheus_client's metric objects take a lock per update (10 % of a
    worker's CPU in a profile of no-op jobs).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._outcomes: dict[tuple[str, str], int] = {}
        self._running: dict[str, int] = {}
        # kind -> (count per bucket, with +Inf last; sum of seconds)
        self._durations: dict[str, tuple[list[int], list[float]]] = {}
        registry.register(self)
        self.queued = Gauge(
            "tragwerk_jobs_queued",
            "Jobs waiting in the queue by kind and priority band (sla, critical, high, normal,"
            " low, other)",
            ["kind", "band"],
            registry=registry,
        )
        self.held = Gauge(
            "tragwerk_jobs_held",
            "Jobs held after their last attempt failed",
            ["kind"],
            registry=registry,
        )
        self.oldest = Gauge(
            "tragwerk_job_oldest_queued_seconds",
            "Age of the oldest queued job by kind",
            ["kind"],
            registry=registry,
        )

    def started(self, kind: str) -> None:
        self._running[kind] = self._running.get(kind, 0) + 1

    def finished(self, kind: str, outcome: str, seconds: float) -> None:
        self._running[kind] -= 1
        key = (kind, outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1
        durations = self._durations.get(kind)
        if durations is None:
            durations = self._durations[kind] = ([0] * (len(JOB_BUCKETS) + 1), [0.0])
        durations[0][bisect_left(JOB_BUCKETS, seconds)] += 1
        durations[1][0] += seconds

    def count(self, kind: str, outcome: str) -> int:
        return self._outcomes.get((kind, outcome), 0)

    def collect(self) -> Iterable[Metric]:
        outcomes = CounterMetricFamily(
            "tragwerk_jobs",
            "Job attempts by kind and outcome (succeeded, retried, held, released)",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), value in sorted(self._outcomes.items()):
            outcomes.add_metric([kind, outcome], value)
        yield outcomes
        running = GaugeMetricFamily(
            "tragwerk_jobs_running", "Jobs running in this worker", labels=["kind"]
        )
        for kind, value in sorted(self._running.items()):
            running.add_metric([kind], value)
        yield running
        seconds = HistogramMetricFamily(
            "tragwerk_job_seconds", "Duration of one job attempt", labels=["kind"]
        )
        for kind, (counts, total) in sorted(self._durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*JOB_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            seconds.add_metric([kind], buckets, total[0])
        yield seconds

    def refresh_queue(self, rows: Iterable[dict[str, object]]) -> None:
        """Replace the queue gauges with one reading of the queue table."""
        self.queued.clear()
        self.held.clear()
        self.oldest.clear()
        oldest: dict[str, float] = {}
        for row in rows:
            kind, status, band = str(row["entrypoint"]), str(row["status"]), str(row["band"])
            count = float(row["jobs"])  # type: ignore[arg-type]
            if status == "failed":
                self.held.labels(kind).inc(count)
            else:
                self.queued.labels(kind, band).inc(count)
                age = float(row["oldest_seconds"])  # type: ignore[arg-type]
                oldest[kind] = max(oldest.get(kind, 0.0), age)
        for kind, age in oldest.items():
            self.oldest.labels(kind).set(age)
