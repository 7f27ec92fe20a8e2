"""Prometheus metrics every process shares: RED of gRPC methods, and the /metrics endpoint.

Each process exposes its registry on ``MT_METRICS_PORT`` (loopback or the compose network;
0 = not served, as in tests that start many processes on free ports). Domain metrics (KV
replication, job kinds, cache hits) are declared next to the code that updates them.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_REQUESTS = Counter(
    "rpc_server_requests_total",
    "gRPC requests served, by method and status code",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "rpc_server_seconds",
    "gRPC request latency, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def serve(host: str, port: int) -> None:
    """Serve this process's metrics on ``host:port`` (a daemon thread), if a port is set."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics serving", extra={"port": port})
