"""The gateway's admission on a logical clock: the adaptive limit, the class shedder, the gate."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from collections import Counter
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from mt_core import criticality
from mt_core.criticality import Criticality
from mt_gateway.admission import (
    AdaptiveLimit,
    Admission,
    Baselines,
    FixedLimit,
    LimitSettings,
    Shedder,
)
from mt_gateway.limits import admission_middleware
from mt_gateway.middleware import errors_middleware

C, D, S = Criticality.CRITICAL, Criticality.DEFAULT, Criticality.SHEDDABLE


def feed(
    limit: AdaptiveLimit,
    route: str,
    latency_s: float,
    n: int,
    *,
    in_flight: int,
    start: float = 0.0,
    gap_s: float = 0.05,
    alone: bool = False,
) -> float:
    """``n`` samples of one route, ``gap_s`` apart; returns the clock after them. ``alone``:
    they were admitted into an empty gate (what the baseline learns from)."""
    now = start
    for _ in range(n):
        now += gap_s
        limit.on_sample(route, latency_s, in_flight, now, alone=alone)
    return now


def learned(limit: AdaptiveLimit, route: str, latency_s: float) -> float:
    """The route's baseline, from requests one at a time."""
    return feed(limit, route, latency_s, 50, in_flight=1, alone=True)


def test_limit__shrinks_once_the_queueing_delay_is_past_its_target() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=20))
    now = learned(limit, "GET /a", 0.050)
    now = feed(limit, "GET /a", 0.050, 200, in_flight=20, start=now)
    before = limit.value
    feed(limit, "GET /a", 0.200, 40, in_flight=before, start=now)  # 4x slower: the gate full
    assert limit.value < before / 2


def test_limit__does_not_shrink_for_a_slowness_it_did_not_queue() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=8))
    now = feed(limit, "GET /a", 0.050, 200, in_flight=1, alone=True)
    before = limit.value
    feed(limit, "GET /a", 0.200, 40, in_flight=1, start=now)  # slow, yet nothing queued
    assert limit.value == before


def test_limit__grows_while_in_use_and_well_within_the_target() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=4))
    now = learned(limit, "GET /a", 0.050)
    before = limit.value
    feed(limit, "GET /a", 0.050, 200, in_flight=before, start=now)
    assert limit.value > before


def test_limit__does_not_grow_while_unused_and_drifts_down_towards_the_use() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=40))
    feed(limit, "GET /a", 0.050, 400, in_flight=2, alone=True)
    assert limit.value <= 2 * 2 + 2


def test_limit__holds_between_half_the_target_and_the_target() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=10, delay_target_ms=40))
    now = learned(limit, "GET /a", 0.100)
    now = feed(limit, "GET /a", 0.100, 100, in_flight=10, start=now)
    held = limit.value
    feed(limit, "GET /a", 0.130, 100, in_flight=10, start=now)  # 30 ms of delay: in the band
    assert limit.value == held


def test_limit__other_work_on_the_cores_is_not_read_as_queueing() -> None:
    """A box whose knee is two requests in flight: a cheap read at twice its unloaded time
    because the async platform shares the cores is a few ms of delay, no reason to close
    the gate to one request (a latency *ratio* would read it as a queue of 100%)."""
    limit = AdaptiveLimit(LimitSettings(initial=3))
    now = learned(limit, "GET /a", 0.005)
    feed(limit, "GET /a", 0.010, 400, in_flight=3, start=now)
    assert limit.value > 3


def test_limit__halves_when_admitted_requests_fail_as_unavailable() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=32))
    now = 0.0
    for _ in range(10):
        now += 0.05
        limit.on_sample("GET /a", 0.05, 32, now, dropped=True)
    assert limit.value == 16


def test_limit__a_mix_of_cheap_and_costly_routes_at_their_own_speed_is_no_overload() -> None:
    """Normalization by route: a signup taking 150 ms is not "slower" than a read of 10 ms."""
    limit = AdaptiveLimit(LimitSettings(initial=8))
    rng = random.Random(7)
    now = 0.0
    for i in range(2_000):
        now += 0.02
        alone = i % 4 == 0  # a quarter of them found the gate empty
        if rng.random() < 0.2:
            signup = 0.150 * rng.uniform(0.9, 1.1)
            limit.on_sample("POST /v1/accounts", signup, 8, now, alone=alone)
        else:
            read = 0.010 * rng.uniform(0.9, 1.1)
            limit.on_sample("GET /v1/posts/{id}", read, 8, now, alone=alone)
    assert limit.value > 8  # it grew: nothing looked like queueing
    assert limit.last_ratio < 1.25


def test_limit__a_rare_route_slowed_down_is_seen_behind_a_healthy_median() -> None:
    """One request in ten is a signup; the signups alone now take twice their unloaded time
    (their password hashes queue): the latency objective is every kind's, so the limit
    shrinks although the median request is as fast as ever."""
    limit = AdaptiveLimit(LimitSettings(initial=12))
    rng = random.Random(3)
    now = 0.0

    def mix(signup_s: float, n: int, *, alone_share: float) -> None:
        nonlocal now
        for _ in range(n):
            now += 0.02
            alone = rng.random() < alone_share
            if rng.random() < 0.1:
                signup = signup_s * rng.uniform(0.95, 1.05)
                limit.on_sample("POST /v1/accounts", signup, limit.value, now, alone=alone)
            else:
                read = 0.010 * rng.uniform(0.95, 1.05)
                limit.on_sample("GET /v1/posts/{id}", read, limit.value, now, alone=alone)

    mix(0.150, 1_000, alone_share=0.25)
    before = limit.value
    mix(0.300, 500, alone_share=0.0)  # the gate full
    assert limit.value < before / 2


def test_baselines__learn_only_from_requests_that_found_the_gate_empty() -> None:
    """Under a long overload no request finds the gate empty: the baseline must not follow
    the slow ones, or it would excuse the queue it is there to detect."""
    base = Baselines()
    now = 0.0
    for _ in range(100):
        now += 0.1
        base.observe("GET /a", 0.050, now, alone=True)
    for _ in range(600):  # a minute at 3x, the gate always in use
        now += 0.1
        base.observe("GET /a", 0.150, now, alone=False)
    assert base.base_s("GET /a") == pytest.approx(0.050)
    assert base.ratio("GET /a", 0.150) == pytest.approx(3.0)


def test_baselines__a_route_that_became_slower_is_believed_within_a_minute_not_at_once() -> None:
    base = Baselines(rise_per_s=0.01)
    now = 0.0
    for _ in range(100):
        now += 0.1
        base.observe("GET /a", 0.050, now, alone=True)
    for _ in range(20):  # two seconds of a route twice as slow, one at a time
        now += 0.1
        base.observe("GET /a", 0.100, now, alone=True)
    soon = base.base_s("GET /a")
    assert soon is not None
    assert soon < 0.050 * 1.05
    for _ in range(900):
        now += 0.1
        base.observe("GET /a", 0.100, now, alone=True)
    assert base.base_s("GET /a") == pytest.approx(0.100)


def test_baselines__forget_nothing_over_an_idle_night() -> None:
    base = Baselines()
    for i in range(100):
        base.observe("GET /a", 0.050, i * 0.1, alone=True)
    for i in range(20):  # eight hours later, a short burst of slow requests
        base.observe("GET /a", 0.300, 8 * 3600 + i * 0.5, alone=True)
    b = base.base_s("GET /a")
    assert b is not None
    assert b < 0.060


def test_baselines__a_noisy_route_is_not_biased_low() -> None:
    """A route whose latency varies threefold (a feed page): its baseline is about its
    median, not its best case, or the limit would see queueing that is not there."""
    base = Baselines()
    rng = random.Random(11)
    samples = [rng.lognormvariate(math.log(0.080), 0.4) for _ in range(3_000)]
    for i, latency in enumerate(samples):
        base.observe("GET /v1/feed", latency, i * 0.3, alone=True)
    b = base.base_s("GET /v1/feed")
    assert b is not None
    assert 0.080 * 0.85 <= b <= 0.080 * 1.15


def test_shedder__refuses_the_lowest_class_first_and_never_critical() -> None:
    shedder = Shedder()
    now = 0.0
    shedder.tick(now)
    for _ in range(4):  # requests meeting the limit: 0.1 + 0.2 + 0.4 + 0.5
        shedder.note(hit=True)
        now += 0.1
        shedder.tick(now)
    assert shedder.p[S] == pytest.approx(1.0)
    assert shedder.p[D] == pytest.approx(0.2)
    assert all(not shedder.shed(C, draw) for draw in (0.0, 0.5, 0.999))


def test_shedder__a_blip_costs_one_small_step() -> None:
    shedder = Shedder()
    shedder.tick(0.0)
    shedder.note(hit=True)
    shedder.tick(0.1)
    shedder.note(full=True)  # busy, but nobody turned away: hold
    shedder.tick(0.2)
    assert shedder.p[S] == pytest.approx(0.1)


def test_shedder__lets_the_highest_class_back_first_once_there_is_room() -> None:
    shedder = Shedder()
    shedder.p[S], shedder.p[D] = 1.0, 0.5
    shedder.tick(0.0)
    shedder.tick(0.5)  # five quiet intervals: five steps down, default first
    assert shedder.p[D] == pytest.approx(0.25)
    assert shedder.p[S] == 1.0


def test_admission__refuses_at_the_limit_with_a_retry_after() -> None:
    gate = Admission(AdaptiveLimit(LimitSettings(initial=2)))
    assert gate.admit(D, 0.0).admitted
    assert gate.admit(D, 0.0).admitted  # below 4, nothing of the limit is kept back
    refused = gate.admit(D, 0.0)
    assert not refused.admitted
    assert refused.reason == "limit"
    assert refused.retry_after_s >= 1.0
    gate.done("PUT /v1/posts/{id}/like", 0.1, 0.1)
    assert gate.admit(D, 0.1).admitted


def test_admission__critical_is_not_blocked_by_what_the_lower_classes_hold() -> None:
    gate = Admission(AdaptiveLimit(LimitSettings(initial=4)))
    admitted_default = 0
    while gate.admit(D, 0.0).admitted:  # the default class fills its share of the limit
        admitted_default += 1
    assert admitted_default == 3  # a quarter of the limit is left to the critical
    for _ in range(4 + 4):  # the limit and the critical's own trunk
        assert gate.admit(C, 0.0).admitted
    assert not gate.admit(C, 0.0).admitted  # the critical alone are bounded too


def test_admission__a_limit_driven_to_its_floor_still_lets_the_critical_through() -> None:
    """Overload has pinned the limit at 1 (it was so in `make capacity` at 4C): the signups
    keep their way in, the lower classes take the refusals."""
    gate = Admission(
        AdaptiveLimit(LimitSettings(initial=1, maximum=1)), draw=random.Random(7).random
    )
    out = simulate(gate, 80, 30, seed=5)
    kept = {
        cls: out[f"{cls.label}:ok"] / (out[f"{cls.label}:ok"] + out[f"{cls.label}:refused"])
        for cls in (C, D, S)
    }
    assert kept[C] >= 0.95, out
    assert kept[D] < kept[C], out
    assert kept[S] < kept[C], out


def test_fixed_limit__is_the_old_bound_whatever_the_class() -> None:
    gate = FixedLimit(1)
    assert gate.admit(S, 0.0).admitted
    assert not gate.admit(C, 0.0).admitted
    gate.done("GET /v1/feed", 0.1, 0.1)
    assert gate.admit(C, 0.2).admitted


def simulate(
    gate: Admission, offered_per_s: float, seconds: float, seed: int = 1, start: float = 0.0
) -> Counter[str]:
    """A box that serves ~40 requests/s: a request takes 50 ms while two or fewer are in
    flight, and proportionally longer beyond (two cores, processor sharing). Arrivals: 10%
    critical, 45% default, 45% sheddable, Poisson at ``offered_per_s``, from ``start`` on the
    gate's clock."""
    rng = random.Random(seed)
    done: list[tuple[float, int]] = []  # (finish time, id)
    started: dict[int, tuple[float, Criticality, bool]] = {}
    outcome: Counter[str] = Counter()
    now, n = start, 0
    while now < start + seconds:
        now += rng.expovariate(offered_per_s)
        while done and done[0][0] <= now:
            finish, rid = heapq.heappop(done)
            begun, of, alone = started.pop(rid)
            gate.done("GET /x", finish - begun, finish, cls=of, alone=alone)
        r = rng.random()
        cls = C if r < 0.1 else D if r < 0.55 else S
        verdict = gate.admit(cls, now)
        outcome[f"{cls.label}:{'ok' if verdict.admitted else 'refused'}"] += 1
        if verdict.admitted:
            n += 1
            started[n] = (now, cls, verdict.alone)
            latency = 0.050 * max(1, gate.in_flight / 2) * rng.uniform(0.8, 1.2)
            heapq.heappush(done, (now + latency, n))
    for finish, rid in sorted(done):  # what is still in flight ends after the arrivals stop
        begun, of, alone = started.pop(rid)
        gate.done("GET /x", finish - begun, finish, cls=of, alone=alone)
    return outcome


def test_admission__under_4x_overload_critical_keeps_its_requests_and_sheddable_goes_first() -> (
    None
):
    gate = Admission(AdaptiveLimit(LimitSettings(initial=16)), draw=random.Random(4).random)
    simulate(gate, 20, 10)  # learn the baseline at half the capacity
    simulate(gate, 160, 2, seed=3, start=10)  # the surge begins: the shedder ramps up
    out = simulate(gate, 160, 30, seed=2, start=12)

    def kept(cls: Criticality) -> float:
        ok, refused = out[f"{cls.label}:ok"], out[f"{cls.label}:refused"]
        return ok / (ok + refused)

    assert kept(C) >= 0.95, out
    assert kept(S) < kept(D) < kept(C), out
    refused_by = {cls: out[f"{cls.label}:refused"] for cls in (C, D, S)}
    assert refused_by[S] > sum(refused_by.values()) / 2, out


def test_admission__pressure_is_zero_when_idle_and_past_one_while_refusing() -> None:
    gate = Admission(AdaptiveLimit(LimitSettings(initial=1)))
    assert gate.state(0.0).pressure == 0.0
    gate.admit(C, 0.0)
    gate.admit(D, 0.0)  # refused at the limit
    assert gate.state(0.1).pressure > 1.0
    gate.done("GET /x", 0.1, 0.1, cls=C)
    assert gate.state(30.0).pressure == 0.0  # long idle: nothing queued, nothing refused


def test_admission__slowness_nothing_queued_slows_the_async_platform_but_never_stops_it() -> None:
    """A lone poller twice as slow as unloaded (the async work shares the cores): past the
    async platform's target, short of 1 (deferral); the same slowness with the gate in use
    is saturation."""
    alone = Admission(AdaptiveLimit(LimitSettings(initial=8)))
    now = feed(alone.limit, "GET /u", 0.005, 200, in_flight=1, alone=True)
    now = feed(alone.limit, "GET /u", 0.065, 40, in_flight=1, start=now)
    assert 0.5 <= alone.pressure(now) < 1.0
    crowded = Admission(AdaptiveLimit(LimitSettings(initial=8)))
    now = learned(crowded.limit, "GET /u", 0.005)
    now = feed(crowded.limit, "GET /u", 0.005, 200, in_flight=8, start=now)
    full = crowded.limit.value
    now = feed(crowded.limit, "GET /u", 0.065, 40, in_flight=full, start=now)
    assert crowded.pressure(now) >= 1.0


async def test_middleware__refuses_before_the_handler_and_spares_health_checks() -> None:
    """A refusal never reaches the handler (no auth, Redis or gRPC was spent on it), carries
    Retry-After, and the class comes from the route: a client's header claiming to be
    critical changes nothing. Health checks are outside admission."""
    entered: list[Criticality] = []
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        entered.append(criticality.current())
        await release.wait()
        return web.json_response({"ok": True})

    gate = FixedLimit(1)
    app = web.Application()
    feed_route = app.router.add_get("/v1/feed", slow)
    app.router.add_get("/healthz", slow)
    app.middlewares.append(admission_middleware(gate, {feed_route: (S, "GET /v1/feed")}))
    async with TestClient(TestServer(app)) as client:
        held = asyncio.create_task(client.get("/v1/feed"))
        await asyncio.sleep(0.1)
        refused = await client.get("/v1/feed", headers={"mt-criticality": "critical"})
        assert refused.status == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await refused.json())["error"]["code"] == "overloaded"
        assert entered == [S]  # only the first, as sheddable
        health = asyncio.create_task(client.get("/healthz"))
        await asyncio.sleep(0.1)
        release.set()
        assert (await health).status == 200
        assert (await held).status == 200
        assert (await client.get("/v1/feed")).status == 200


def test_route_classes__every_route_has_one_and_the_api_document_states_it() -> None:
    import mt_gateway.api  # noqa: F401 - the handlers register their routes on import
    from mt_gateway.classes import ROUTE_CLASSES
    from mt_gateway.openapi import spec
    from mt_gateway.routing import ENDPOINTS

    routes = {(ep.method, ep.path) for ep in ENDPOINTS}
    assert routes == set(ROUTE_CLASSES)  # none missing, none stale
    document = spec()
    for method, path in routes:
        stated = document["paths"][path][method.lower()]["x-criticality"]
        assert stated == ROUTE_CLASSES[method, path].label
    assert ROUTE_CLASSES["POST", "/v1/accounts"] is C
    assert ROUTE_CLASSES["GET", "/v1/feed"] is S


def test_admission__an_idle_gate_turns_nobody_away_however_low_its_limit() -> None:
    """Refusing with nothing in flight would protect nothing, and a gate that admits nothing
    learns nothing: it could never reopen."""
    gate = Admission(AdaptiveLimit(LimitSettings(initial=1)))
    gate.shedder.p[S] = 1.0
    assert gate.admit(S, 0.0).admitted
    assert not gate.admit(S, 0.0).admitted
    gate.done("GET /v1/feed", 0.05, 0.05)
    assert gate.admit(S, 0.1).admitted


def test_limit__probes_higher_when_refusals_leave_it_nothing_to_learn_from() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=1))
    limit.starved(0.0)
    limit.starved(1.0)
    assert limit.value == 1
    limit.starved(2.5)  # no window closed for 2.5 s while requests were turned away
    assert limit.value == 2


class _Spy(FixedLimit):
    """The old fixed bound, remembering how each request ended."""

    def __init__(self) -> None:
        super().__init__(4)
        self.ended: list[bool] = []

    def done(self, route: str, latency_s: float, now: float, **kw: Any) -> None:
        self.ended.append(bool(kw.get("dropped")))
        super().done(route, latency_s, now, **kw)


@pytest.mark.parametrize("cancels", [False, True], ids=["read_fails", "handler_cancelled"])
async def test_middleware__a_client_that_goes_away_is_no_sign_of_overload(cancels: bool) -> None:
    """A browser leaving a page cuts its requests short; that used to reach admission as a
    500 and halve the limit, so a lone user's next page met 503s on an idle gateway. The
    gateway's server lets the handler run on (its read fails); aiohttp can also cancel it."""

    async def reads_body(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    gate = _Spy()
    app = web.Application(middlewares=[errors_middleware])
    route = app.router.add_post("/v1/posts", reads_body)
    app.middlewares.insert(0, admission_middleware(gate, {route: (S, "POST /v1/posts")}))
    runner = web.AppRunner(app, handler_cancellation=cancels)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/posts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()  # mid-body
        await writer.wait_closed()
        for _ in range(50):
            if gate.ended:
                break
            await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()
    assert gate.ended == [False]
