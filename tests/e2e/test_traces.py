"""Telemetry end to end: real actions through the REST API, then the tracing UI's API
(Zipkin, as a person would query it) must show every service, a gateway trace crossing at
least four of them with real parent -> child edges, the KV's replication, and the worker
that finished the job, in the same trace (the job continues the request's trace: its consumer
span is a child of the producer span that published it). The stack samples a share of the
traces (MT_TRACE_SAMPLE_RATIO); the test asks for its trace as a developer would, with a
sampled W3C ``traceparent``."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import aiohttp

from tests.api import Api, eventually

ZIPKIN = "http://127.0.0.1:9411/api/v2"
SERVICES = {"gateway", "users", "graph", "posts", "feed", "kv", "workers"}


async def _zipkin(http: aiohttp.ClientSession, path: str, **params: str) -> Any:
    async with http.get(f"{ZIPKIN}/{path}", params=params) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _service(span: dict[str, Any]) -> str:
    return str(span.get("localEndpoint", {}).get("serviceName", ""))


def _edges(spans: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(parent service, child service) for every parent -> child edge crossing services."""
    by_id = {s["id"]: s for s in spans}
    edges: Counter[tuple[str, str]] = Counter()
    for span in spans:
        parent = by_id.get(span.get("parentId", ""))
        if parent is not None and _service(parent) != _service(span):
            edges[(_service(parent), _service(span))] += 1
    return edges


def sampled() -> dict[str, str]:
    """A new trace the stack records whatever its sample ratio (parent-based sampling)."""
    return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}


async def _signup(api: Api) -> tuple[dict[str, Any], str]:
    body = {"handle": f"tr{secrets.token_hex(5)}", "password": "correct horse"}
    reply = await api.call("POST", "/v1/accounts", body, headers=sampled())
    assert reply.status == 201, reply.body
    return reply.body["user"], reply.body["token"]


async def test_traces__a_post_is_followed_from_the_gateway_to_the_worker(api: Api) -> None:
    # Every request traced, so that every service shows in the tracing UI.
    author, ta = await _signup(api)
    _, tb = await _signup(api)
    path = f"/v1/me/following/{author['handle']}"
    assert (await api.call("PUT", path, token=tb, headers=sampled())).status == 204
    # An active reader: the post is fanned out to it.
    await api.call("GET", "/v1/feed", token=tb, headers=sampled())
    reply = await api.call("POST", "/v1/posts", {"text": "traced"}, token=ta, headers=sampled())
    assert reply.status == 201, reply.body
    post = reply.body

    async def services() -> set[str]:
        found = set(await _zipkin(api.http, "services"))
        return found if found >= SERVICES else set()

    await eventually(services, timeout_s=60, what="every service in the tracing UI")

    async def the_trace() -> list[dict[str, Any]]:
        traces = await _zipkin(
            api.http,
            "traces",
            serviceName="gateway",
            annotationQuery=f"mt.post_id={post['id']}",
            lookback="600000",
            limit="10",
        )
        spans = [s for t in traces for s in t]
        names = {s["name"] for s in spans}
        edges = _edges(spans)
        # Spans arrive in batches from each process: wait for the whole story.
        sql = any(n.lower().startswith("insert") for n in names)  # the replicas' SQLite
        complete = (
            sql
            and {"kv.replicate", "kv.append"} <= names
            and all(edges[e] for e in (("gateway", "posts"), ("posts", "kv"), ("posts", "workers")))
        )
        return spans if complete else []

    spans = await eventually(the_trace, timeout_s=60, what="the post's whole trace")
    assert len({s["traceId"] for s in spans}) == 1
    crossing = _edges(spans)
    involved = {_service(s) for s in spans}
    assert len(involved) >= 4, involved
    assert crossing[("gateway", "posts")] >= 1, crossing  # REST -> gRPC
    assert crossing[("posts", "kv")] >= 1, crossing  # gRPC -> the KV
    assert crossing[("posts", "workers")] >= 1, crossing  # Kafka: producer -> consumer
    names = Counter(s["name"] for s in spans)
    assert names["kv.replicate"] >= 1, names  # the primary shipping the write to a follower
    assert names["kv.append"] >= 1, names  # ... and the follower making it durable
    consumer = [s for s in spans if _service(s) == "workers" and s.get("kind") == "CONSUMER"]
    assert consumer, "no consumer span in the worker"
