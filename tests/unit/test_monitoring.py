"""Plain-counter metrics and the request id in log records (pure logic)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tragwerk.monitoring.logging import REQUEST_ID, add_request_id
from tragwerk.monitoring.metrics import HttpMetrics, Metrics, PlainHistogram


def test_plain_histogram_renders_cumulative_buckets() -> None:
    histogram = PlainHistogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 5.0):
        histogram.observe(("a",), value)
    family = histogram.family("x_seconds", "doc", ["kind"])
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("x_seconds_bucket", "0.1")] == 1
    assert samples[("x_seconds_bucket", "1.0")] == 3
    assert samples[("x_seconds_bucket", "+Inf")] == 4
    assert samples[("x_seconds_count", None)] == 4
    assert samples[("x_seconds_sum", None)] == pytest.approx(6.05)


def test_http_metrics_render_at_scrape_time() -> None:
    registry = CollectorRegistry()
    http = HttpMetrics(registry)
    http.in_flight = 2
    http.finished("/v1/cases", "GET", 200, 0.003)
    http.finished("/v1/cases", "GET", 200, 0.004)
    text = generate_latest(registry).decode()
    assert 'tragwerk_http_requests_total{method="GET",route="/v1/cases",status="200"} 2.0' in text
    assert 'tragwerk_http_request_seconds_count{method="GET",route="/v1/cases"} 2.0' in text
    assert "tragwerk_http_requests_in_flight 2.0" in text


def test_module_operations_count_errors_and_show_zero_before_the_first() -> None:
    metrics = Metrics()
    reporter = metrics.module("m")
    with reporter.operation("ok"):
        pass
    with pytest.raises(ValueError, match="refused"), reporter.operation("bad"):
        raise ValueError("refused")
    text = metrics.render().decode()
    assert 'tragwerk_module_errors_total{module="m",operation="ok"} 0.0' in text
    assert 'tragwerk_module_errors_total{module="m",operation="bad"} 1.0' in text
    assert 'tragwerk_module_operation_seconds_count{module="m",operation="bad"} 1.0' in text


def test_log_records_carry_the_request_id_while_one_is_set() -> None:
    assert "request_id" not in add_request_id(None, "info", {"event": "x"})
    token = REQUEST_ID.set(b"abc123")
    try:
        assert add_request_id(None, "info", {"event": "x"})["request_id"] == "abc123"
    finally:
        REQUEST_ID.reset(token)
