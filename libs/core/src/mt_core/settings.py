"""Typed settings, built once at start-up from the environment and passed down.

Every service subclasses :class:`ServiceSettings` with its own fields. Variables are prefixed
``MT_`` (``MT_GRPC_PORT``, ``MT_USERS_ADDR``...); the standard ``OTEL_*`` variables are read by
OpenTelemetry itself. Units are in the names (``_ms``, ``_s``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every minithreads process needs to know about itself and its neighbours."""

    model_config = SettingsConfigDict(env_prefix="MT_", extra="ignore", frozen=True)

    service_name: str = Field("minithreads", description="service.name of traces and logs")
    host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = 0  # Prometheus /metrics of this process; 0 = not served
    log_level: str = "INFO"
    log_json: bool = True
    shutdown_grace_ms: int = 5_000
    default_rpc_timeout_ms: int = 5_000
    gc_gen0_threshold: int = 50_000  # allocations between young collections (CPython: 700)
    loop_stall_log_ms: float = 100.0  # an event-loop stall this long is logged
    # The event loop: asyncio's own, or uvloop (libuv) where a service declares the dependency
    # and measured it worth having (the KV: see mt_kv.settings).
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"

    # Where the neighbours are. Compose and the launcher set these; the defaults are `make up`'s.
    users_addr: str = "127.0.0.1:50051"
    graph_addr: str = "127.0.0.1:50052"
    posts_addr: str = "127.0.0.1:50053"
    feed_addr: str = "127.0.0.1:50055"
    kv_addr: str = "127.0.0.1:50060"
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap: str = "127.0.0.1:9092"

    # Overload control of a gRPC service (mt_core.overload): an event loop later than this
    # (90th percentile of half a second) starts refusing the lowest criticality classes.
    overload_lag_target_ms: float = 20.0
    # A KV commit slower than this (the KV client's recent average) counts as overload too.
    kv_commit_target_ms: float = 100.0

    # An outbox job row older than this is published by the relay (its writer presumably died
    # between its write and its publish; a slower writer only causes a duplicate).
    outbox_stale_ms: int = 5_000

    # Tracing: the exporter and its endpoint follow OTEL_TRACES_EXPORTER and
    # OTEL_EXPORTER_ZIPKIN_ENDPOINT; this switch exists so tests can turn export off.
    tracing_enabled: bool = True
    # Whether this process starts traces of its own (requests that arrive without a sampled
    # trace context). Infrastructure that serves other services (the KV) only records spans
    # inside its callers' traces, plus the root span names listed here; OTEL_TRACES_SAMPLER,
    # when set, overrides both.
    trace_roots: bool = True
    trace_root_names: str = ""  # comma list, used when trace_roots is off
    # Of the requests that arrive without a trace, the share a process with trace_roots starts
    # one for (parent-based: a sampled caller's trace is always continued, an unsampled one
    # never). Recording every request costs more than a request's own work in places (an
    # exception recorded on a span formats its traceback); 1.0 is for development.
    trace_sample_ratio: float = Field(0.01, ge=0.0, le=1.0)

    def service_addrs(self) -> dict[str, str]:
        """The gRPC address of each product service and the KV, by service name."""
        return {
            "users": self.users_addr,
            "graph": self.graph_addr,
            "posts": self.posts_addr,
            "feed": self.feed_addr,
            "kv": self.kv_addr,
        }
