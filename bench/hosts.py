"""Throughput through the gateway with one, two and three hosts, against one host direct.

    python -m bench.hosts [--seconds 10] [--connections 32] [--rounds 2]

Builds the same cluster as tests/acceptance/test_hosts.py (three network namespaces,
each running `tragwerk api --workers 2` and `tragwerk worker`, behind HAProxy from
`tragwerk gateway config`; needs root, haproxy, wrk, redis-server), then runs wrk
from the root namespace: straight at host 1, and through the gateway with hosts 2
and 3 put in maintenance or ready through HAProxy's runtime API. Rounds alternate the
configurations so that a drift of the machine hits all of them alike.

On a machine with two cores every host shares the same two cores, so more hosts
cannot add throughput here: the figures measure what the gateway costs and that it
spreads load, not scale-out.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from tests.hosts import Cluster, running_cluster, wrk

PATHS = {"list (database)": "/v1/cases?limit=5", "reference (cached)": "/v1/roles"}


def _hosts_in_rotation(cluster: Cluster, count: int) -> None:
    for host in cluster.network.hosts:
        state = "ready" if host.index <= count else "maint"
        cluster.gateway.runtime(f"set server api/api{host.index} state {state}")
    for host in cluster.network.hosts[:count]:
        cluster.gateway.wait_for(f"api{host.index}", "UP")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    haproxy = shutil.which("haproxy")
    if haproxy is None or shutil.which("wrk") is None:
        print("bench.hosts needs haproxy and wrk (apt-get install haproxy wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="tragwerk-bench-hosts-"))
    rps: dict[tuple[str, str], list[float]] = {}
    failed = 0
    try:
        print("building three hosts (namespaces), PostgreSQL, Redis, HAProxy ...", flush=True)
        with running_cluster(haproxy, workdir, 3, check_interval=1.0) as cluster:
            targets = [("one host, direct", 0), *((f"gateway, {n} host(s)", n) for n in (1, 2, 3))]
            for round_no in range(1, args.rounds + 1):
                for name, hosts in targets:
                    if hosts:
                        _hosts_in_rotation(cluster, hosts)
                    url = cluster.url if hosts else cluster.network.hosts[0].api_url
                    for label, path in PATHS.items():
                        result = wrk(url, args.connections, args.seconds, cluster.token, path)
                        rps.setdefault((name, label), []).append(result["rps"])
                        failed += result["failed"]
                        print(
                            f"round {round_no}: {name:<20} {label:<20}"
                            f" {result['rps']:8.0f} requests/s"
                            f"  p99 {result['p99_us'] / 1000:.1f} ms"
                            f"  failed {result['failed']}",
                            flush=True,
                        )
            _hosts_in_rotation(cluster, 3)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmedian requests/s over {args.rounds} rounds, {args.connections} connections:")
    print(f"| target | {' | '.join(PATHS)} |")
    print(f"|---|{'---:|' * len(PATHS)}")
    direct = {label: statistics.median(rps[("one host, direct", label)]) for label in PATHS}
    for name in dict.fromkeys(name for name, _ in rps):
        cells = []
        for label in PATHS:
            value = statistics.median(rps[(name, label)])
            cells.append(f"{value:,.0f} ({value / direct[label]:.0%})")
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"\nfailed requests in all runs: {failed}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
