"""What `tragwerk gateway config` renders, and which input it refuses (no HAProxy needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tragwerk.cli import main
from tragwerk.scaling.gateway import GatewayConfig, Server, parse_address, render


def test_addresses_are_host_and_port() -> None:
    assert parse_address("10.0.0.2:8000") == Server("10.0.0.2", 8000)
    assert parse_address("[::1]:8000").address == "[::1]:8000"
    for bad in ("10.0.0.2", "10.0.0.2:0", "10.0.0.2:70000", ":80", "::1:8000", "[zz]:80"):
        with pytest.raises(ValueError, match=r"HOST:PORT|brackets|IPv6|address"):
            parse_address(bad)


def test_every_instance_is_a_checked_server_in_one_leastconn_backend() -> None:
    servers = [parse_address(f"10.0.0.{i}:8000") for i in (2, 3, 4)]
    text = render(GatewayConfig(servers))
    assert "balance leastconn" in text
    assert "option httpchk GET /health/ready" in text
    for i, server in enumerate(servers, start=1):
        assert f"server api{i} {server.address}\n" in text
    assert "default-server check inter 1000ms" in text
    assert "slowstart" in text
    assert "observe layer7" in text


def test_posts_and_patches_are_never_sent_twice() -> None:
    text = render(GatewayConfig([Server("10.0.0.2", 8000)]))
    assert "retry-on conn-failure empty-response response-timeout 503" in text
    assert "http-request disable-l7-retry if METH_POST || { method PATCH }" in text
    assert "option redispatch" in text


def test_ops_paths_are_closed_unless_exposed_and_internal_networks_go_first() -> None:
    closed = render(GatewayConfig([Server("10.0.0.2", 8000)], internal_networks=("10.1.0.0/16",)))
    assert "path_beg /metrics /health/ /v1/admin/ } !internal" in closed
    assert "acl internal src 10.1.0.0/16" in closed
    assert "set-priority-class int(-100) if internal" in closed
    opened = render(GatewayConfig([Server("10.0.0.2", 8000)], expose_ops=True))
    assert "path_beg /metrics" not in opened
    assert "acl internal always_false" in opened


def test_refused_configurations() -> None:
    with pytest.raises(ValueError, match="at least one"):
        GatewayConfig([])
    with pytest.raises(ValueError, match="twice"):
        GatewayConfig([Server("10.0.0.2", 8000), Server("10.0.0.2", 8000)])
    with pytest.raises(ValueError, match="does not appear to be"):
        GatewayConfig([Server("10.0.0.2", 8000)], internal_networks=("10.0.0.0/33",))


def test_the_command_prints_and_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "config", "--api", "127.0.0.1:8001", "--stats", "off"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Rendered by `tragwerk gateway config`")
    assert "frontend stats" not in out
    assert main(["gateway", "config", "--api", "nowhere"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err


def test_the_example_in_deploy_is_what_the_command_renders() -> None:
    example = Path(__file__).parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
    rendered = render(
        GatewayConfig(
            [parse_address(f"10.0.1.{n}:8000") for n in (11, 12, 13)],
            bind=parse_address("0.0.0.0:80"),
            internal_networks=("10.0.2.0/24",),
        )
    )
    assert example.read_text() == rendered
