"""One Prometheus registry per process and the module reporters that write to it."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from tragwerk.domain.observability import Tally

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
        # Operations, their errors and events are counted in plain containers and read
        # at scrape time: they happen on nearly every request, and prometheus_client's
        # metric objects take a lock per update.
        self.operation_seconds = PlainHistogram(LATENCY_BUCKETS)
        self.operation_errors: dict[tuple[str, str], int] = {}
        self.event_counts: dict[str, dict[str, int]] = {}  # module -> event -> count
        self.event_tallies: dict[tuple[str, str], list[Tally]] = {}  # kept by their owners
        self.registry.register(_ModuleCollector(self))
        self.values = Gauge(
            "tragwerk_module_value",
            "Values a module reports when scraped (entries, age of the oldest entry)",
            ["module", "name"],
            registry=self.registry,
        )
        self.http = HttpMetrics(self.registry)

        self.jobs = JobMetrics(self.registry)

    def events(self) -> dict[tuple[str, str], int]:
        """Every module's events: the counted ones and the tallies, summed."""
        events = {
            (module, event): value
            for module, counts in self.event_counts.items()
            for event, value in counts.items()
        }
        for key, tallies in self.event_tallies.items():
            events[key] = events.get(key, 0) + sum(tally.n for tally in tallies)
        return events

    def module(self, name: str) -> ModuleMonitor:
        return ModuleMonitor(self, name)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def counter_family(
    name: str,
    documentation: str,
    labels: list[str],
    samples: Iterable[tuple[tuple[object, ...], float]],
) -> CounterMetricFamily:
    """A counter family from (label values, value) pairs, sorted by label values."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, value in sorted(samples, key=lambda sample: sample[0]):
        family.add_metric([str(v) for v in values], value)
    return family


class _ModuleCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        metrics = self._metrics
        yield metrics.operation_seconds.family(
            "tragwerk_module_operation_seconds",
            "Duration of module operations",
            ["module", "operation"],
        )
        yield counter_family(
            "tragwerk_module_errors",
            "Module operations that raised",
            ["module", "operation"],
            metrics.operation_errors.items(),
        )
        yield counter_family(
            "tragwerk_module_events",
            "Notable events of a module (cache hits and misses, invalidations, reconnects)",
            ["module", "event"],
            metrics.events().items(),
        )


class _Timed:
    """One timed operation: a context manager as a class, ~5x cheaper than a generator."""

    __slots__ = ("_errors", "_histogram", "_key", "_start")

    def __init__(
        self, histogram: PlainHistogram, errors: dict[tuple[str, str], int], key: tuple[str, str]
    ) -> None:
        self._histogram = histogram
        self._errors = errors
        self._key = key
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._histogram.observe(self._key, time.perf_counter() - self._start)
        if exc_type is not None:  # an exception leaving the block, cancellation included
            self._errors[self._key] += 1


class PlainHistogram:
    """Histogram series kept in plain lists and rendered at scrape time.

    prometheus_client's Histogram takes a lock per observation; on paths that run
    thousands of times a second (requests, jobs) that lock was a tenth of the CPU.
    The event loop is single-threaded, so plain lists need none.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self._bounds = (*(str(b) for b in buckets), "+Inf")
        # label values -> (count per bucket, +Inf last; [sum])
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        series[0][bisect_left(self.buckets, value)] += 1
        series[1][0] += value

    def family(self, name: str, documentation: str, labels: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=labels)
        for values, (counts, total) in sorted(self.series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(self._bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(values), buckets, total[0])
        return family


class HttpMetrics(Collector):
    """Requests by route template, method and status; their duration; those in flight.

    Updated once per request by the API's gate (tragwerk.api.gate), so in plain
    counters read at scrape time rather than through locked metric objects.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = 0
        self._requests: dict[tuple[str, str, int], int] = {}
        self._seconds = PlainHistogram(LATENCY_BUCKETS)
        registry.register(self)

    def finished(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._seconds.observe((route, method), seconds)

    def status_counts(self) -> dict[int, int]:
        """Requests served so far by status code, all routes together."""
        counts: dict[int, int] = {}
        for (_route, _method, status), n in list(self._requests.items()):
            counts[status] = counts.get(status, 0) + n
        return counts

    def collect(self) -> Iterable[Metric]:
        yield counter_family(
            "tragwerk_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            self._requests.items(),
        )
        yield self._seconds.family(
            "tragwerk_http_request_seconds",
            "HTTP request duration by route template and method",
            ["route", "method"],
        )
        yield GaugeMetricFamily(
            "tragwerk_http_requests_in_flight", "HTTP requests being served", value=self.in_flight
        )


class ModuleMonitor:
    """A `ModuleReporter` that writes one module's figures to the registry."""

    def __init__(self, metrics: Metrics, module: str) -> None:
        self._metrics = metrics
        self._module = module
        self._up = metrics.module_up.labels(module)
        self._up.set(1)
        self._counts = metrics.event_counts.setdefault(module, {})

    def operation(self, name: str) -> AbstractContextManager[None]:
        key = (self._module, name)
        errors = self._metrics.operation_errors
        if key not in errors:
            errors[key] = 0  # shown as 0 from the first use on, so rates start at once
        return _Timed(self._metrics.operation_seconds, errors, key)

    def set_healthy(self, healthy: bool) -> None:
        self._up.set(1 if healthy else 0)

    def count(self, event: str, amount: int = 1) -> None:
        counts = self._counts
        counts[event] = counts.get(event, 0) + amount

    def observe(self, name: str, read: Callable[[], float]) -> None:
        self._metrics.values.labels(self._module, name).set_function(read)

    def tally(self, event: str) -> Tally:
        tally = Tally()
        self._metrics.event_tallies.setdefault((self._module, event), []).append(tally)
        return tally


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
        self._durations = PlainHistogram(JOB_BUCKETS)
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
        self.orphaned = Gauge(
            "tragwerk_jobs_orphaned",
            "Jobs claimed by a worker that has sent no heartbeat for the heartbeat timeout"
            " (it died); another worker claims them again",
            ["kind"],
            registry=registry,
        )
        self.oldest = Gauge(
            "tragwerk_job_oldest_queued_seconds",
            "Age of the oldest queued job by kind and priority band",
            ["kind", "band"],
            registry=registry,
        )

    def started(self, kind: str) -> None:
        self._running[kind] = self._running.get(kind, 0) + 1

    def finished(self, kind: str, outcome: str, seconds: float) -> None:
        self._running[kind] -= 1
        key = (kind, outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1
        self._durations.observe((kind,), seconds)

    def totals(self) -> dict[str, int]:
        """Job runs of this process so far by outcome, all kinds together."""
        totals: dict[str, int] = {}
        for (_kind, outcome), n in list(self._outcomes.items()):
            totals[outcome] = totals.get(outcome, 0) + n
        return totals

    def count(self, kind: str, outcome: str) -> int:
        return self._outcomes.get((kind, outcome), 0)

    def collect(self) -> Iterable[Metric]:
        yield counter_family(
            "tragwerk_jobs",
            "Job runs by kind and outcome (succeeded, retried, held, deferred, released,"
            " unrecorded)",
            ["kind", "outcome"],
            self._outcomes.items(),
        )
        running = GaugeMetricFamily(
            "tragwerk_jobs_running", "Jobs running in this worker", labels=["kind"]
        )
        for kind, value in sorted(self._running.items()):
            running.add_metric([kind], value)
        yield running
        yield self._durations.family(
            "tragwerk_job_seconds", "Duration of one job attempt", ["kind"]
        )

    def refresh_queue(self, rows: Iterable[dict[str, object]]) -> None:
        """Replace the queue gauges with one reading of the queue table."""
        self.queued.clear()
        self.held.clear()
        self.orphaned.clear()
        self.oldest.clear()
        oldest: dict[tuple[str, str], float] = {}
        for row in rows:
            kind, status, band = str(row["entrypoint"]), str(row["status"]), str(row["band"])
            count = float(row["jobs"])  # type: ignore[arg-type]
            if status == "failed":
                self.held.labels(kind).inc(count)
            elif status == "orphaned":
                self.orphaned.labels(kind).inc(count)
            else:
                self.queued.labels(kind, band).inc(count)
                age = float(row["oldest_seconds"])  # type: ignore[arg-type]
                oldest[(kind, band)] = max(oldest.get((kind, band), 0.0), age)
        for (kind, band), age in oldest.items():
            self.oldest.labels(kind, band).set(age)
