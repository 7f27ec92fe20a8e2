"""Settings of the gateway, from ``MT_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "gateway"
    http_port: int = 8080
    health_timeout_ms: int = 1_000
    max_body_bytes: int = 64 * 1024
    web_root: str = "web/dist"  # the web client's build (make web), from the repository
    home: str = ".local"  # MT_HOME: the operator's token is in its secrets/
    prometheus_url: str = "http://127.0.0.1:9090"  # the control room's data (loopback)
    zipkin_ui_url: str = "http://127.0.0.1:9411/zipkin/"  # linked from the control room
    # A log line per request (aiohttp's access log): a tenth of a cheap request's CPU; the
    # RED metrics on /metrics count every request anyway.
    access_log: bool = False
    # Admission (mt_gateway.admission): "adaptive" follows the latency of what it admits and
    # refuses the lower criticality classes first; "fixed" is the old bound of max_in_flight
    # requests in progress, whatever their class, kept to compare against.
    admission: Literal["adaptive", "fixed"] = "adaptive"
    max_in_flight: int = 256  # fixed admission only
    # Admitted requests' typical queueing delay (beyond their route's unloaded latency) past
    # which the adaptive limit shrinks: a sixth of the 250 ms latency objective.
    admission_delay_target_ms: float = 40.0
    admission_initial_limit: int = 16
    admission_min_limit: int = 1
    admission_publish_ms: int = 250  # the gate's state to metrics and the async platform
    # Rate limits (fixed one-minute windows in Redis). The load test raises the per-IP one:
    # all its simulated users come from one address.
    rate_per_ip_per_min: int = 3_000
    rate_per_user_per_min: int = 1_200
    login_per_handle_per_min: int = 10  # brute force on one account, from anywhere
    login_per_ip_per_min: int = 60  # brute force across accounts, from one address
    # The legacy identity provider: guessing one account's credential is held to the login
    # limit per account; an address may ask for as many assertions as requests in general
    # (a credential is 120 random bits: there is nothing to sweep across accounts).
    assertion_per_ip_per_min: int = 3_000
