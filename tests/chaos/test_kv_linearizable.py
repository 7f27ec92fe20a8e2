"""The KV under repeated primary kills, pauses and partitions: every history linearizable,
nothing lost.

Clients read and write a few register keys and increment a counter, recording every
operation (call, return, output; an error is an unknown outcome). Meanwhile the primary of
those keys' shards is, again and again, kill -9'd (then restarted), SIGSTOPped past its lease
(then resumed), or cut off from both its followers (every replication link goes through a
userspace TCP proxy; the manager still hears its heartbeats) and then healed. Afterwards the
histories go through the linearizability checker, and the counter must equal the acknowledged
increments (plus at most the unknown ones): below is a lost write, above a duplicated one.
With exactly-once writes, no write may end with an unknown outcome: the client repeats it under
its session number and the primary answers a repeat with the first outcome.
"""

from __future__ import annotations

import asyncio
import functools
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mt_chaos.history import History
from mt_chaos.linearizability import check
from mt_chaos.proxy import LinkProxy
from mt_cli.kvcluster import KVCluster
from mt_cli.ports import free_port
from mt_kv_client import Consistency, Key, KVClient

from tests.chaos.conftest import FULL, Tally, indeterminate

pytestmark = pytest.mark.chaos

REGISTERS = [Key("test", f"reg{i}".encode(), b"r") for i in range(4)]
COUNTER = Key("test", b"counter", b"n")
FAULTS = 40 if FULL else 4  # half kills (20 in a full run), a quarter pauses, a quarter cuts
CLIENTS = 6


@pytest.fixture
def unstarted(tmp_path: Path) -> KVCluster:
    return KVCluster(tmp_path)  # its ports are chosen; nothing runs yet


@pytest.fixture
async def links(unstarted: KVCluster) -> AsyncIterator[dict[tuple[str, str], list[LinkProxy]]]:
    """Proxies per link (replica a reaching b: its replication link, and gRPC for snapshots);
    each replica is told to reach its peers through them."""
    pairs = [(a, b) for a in unstarted.ports for b in unstarted.ports if a != b]
    unstarted.repl_ports = {name: free_port() for name in unstarted.ports}  # the proxies' targets
    grpc_proxies = {p: await LinkProxy("127.0.0.1", unstarted.ports[p[1]]).start() for p in pairs}
    repl_proxies = {
        p: await LinkProxy("127.0.0.1", unstarted.repl_ports[p[1]]).start() for p in pairs
    }

    def through(proxies: dict[tuple[str, str], LinkProxy], src: str) -> str:
        return ",".join(
            f"{b}=127.0.0.1:{proxy.port}" for (a, b), proxy in proxies.items() if a == src
        )

    unstarted.peer_addrs = {a: through(grpc_proxies, a) for a in unstarted.ports}
    unstarted.peer_repl_addrs = {a: through(repl_proxies, a) for a in unstarted.ports}
    try:
        yield {p: [grpc_proxies[p], repl_proxies[p]] for p in pairs}
    finally:
        for proxy in [*grpc_proxies.values(), *repl_proxies.values()]:
            await proxy.close()


@pytest.fixture
async def cluster(
    unstarted: KVCluster, links: dict[tuple[str, str], list[LinkProxy]]
) -> AsyncIterator[KVCluster]:
    try:
        await unstarted.start()
        yield unstarted
    finally:
        unstarted.stop()


async def _client(kv: KVClient, history: History, n: int, stop: asyncio.Event) -> None:
    rng = random.Random(n)
    i = 0
    while not stop.is_set():
        i += 1
        roll = rng.random()
        if roll < 0.2:
            await history.record("counter", "incr", 1, lambda: kv.increment(COUNTER, 1))
        else:
            key = rng.choice(REGISTERS)
            name = key.partition.decode()
            if roll < 0.6:
                value = f"c{n}-{i}"
                await history.record(name, "put", value, functools.partial(_put, kv, key, value))
            else:
                await history.record(name, "get", None, functools.partial(_get, kv, key))
        await asyncio.sleep(rng.uniform(0.005, 0.02))


async def _put(kv: KVClient, key: Key, value: str) -> None:
    await kv.put(key, value.encode())


async def _get(kv: KVClient, key: Key) -> str | None:
    item = await kv.get(key, Consistency.STRONG)
    return None if item is None else item.value.decode()


async def _faults(
    cluster: KVCluster, kv: KVClient, links: dict[tuple[str, str], list[LinkProxy]], tally: Tally
) -> None:
    rng = random.Random(7)
    shards = {kv.shard_of(k) for k in [*REGISTERS, COUNTER]}
    for n in range(FAULTS):
        await asyncio.sleep(rng.uniform(1.0, 2.0))
        status = await cluster.status()
        primaries = [s.primary for s in status.shards if s.id in shards and s.primary]
        if not primaries:
            continue
        victim = rng.choice(primaries)
        if n % 4 == 3:
            # Cut off from both followers: no quorum, so writes stall and strong reads are
            # refused once the lease runs out; nothing may be acknowledged without a majority.
            cut = [p for (a, b), ps in links.items() if victim in (a, b) for p in ps]
            for proxy in cut:
                proxy.cut()
            tally.partitions += 1
            await asyncio.sleep(3.0)
            for proxy in cut:
                proxy.heal()
        elif n % 4 == 2:
            # A pause past the lease: the manager fails it over; when it wakes up it must
            # not serve or accept anything as the old primary.
            cluster.signal(victim, signal.SIGSTOP)
            tally.pauses += 1
            await asyncio.sleep(3.0)
            cluster.signal(victim, signal.SIGCONT)
        else:
            cluster.kill(victim)
            tally.kills += 1
            await asyncio.sleep(2.5)  # failover happens meanwhile
            cluster.start_replica(victim)
        await cluster.wait_healthy(60)


@pytest.mark.timeout(1200)
async def test_kv_under_kills_pauses_and_partitions__is_linearizable_and_loses_nothing(
    cluster: KVCluster, links: dict[tuple[str, str], list[LinkProxy]], tally: Tally
) -> None:
    history = History()
    stop = asyncio.Event()
    async with KVClient(cluster.manager_addr, retry_budget_ms=10_000) as kv:
        await kv.put(COUNTER, b"0")
        history.ops.clear()
        clients = [asyncio.create_task(_client(kv, history, n, stop)) for n in range(CLIENTS)]
        try:
            await _faults(cluster, kv, links, tally)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        # Final reads, after every fault: part of the history too.
        for key in REGISTERS:
            await history.record(
                key.partition.decode(), "get", None, functools.partial(_get, kv, key)
            )
        final = await kv.get(COUNTER, Consistency.STRONG)
        status = await cluster.status()
    assert final is not None
    counted = int(final.value)
    totals = [op.output for op in history.acknowledged("incr")]
    acked, unknown = len(totals), len(history.unknown("incr"))
    # Each acknowledged increment returned the total it made: all different, none past the end.
    repeated = len(totals) - len(set(totals))
    tally.acked += acked + len(history.acknowledged("put"))
    tally.lost += max(0, acked - counted)
    tally.duplicated += max(0, counted - acked - unknown) + repeated
    writes = ("put", "incr")
    unsure = sum(1 for kind, err in history.raised if kind in writes and indeterminate(err))
    tally.indeterminate += unsure
    tally.retried += kv.writes.repeated
    tally.failover_ms += [f.detect_ms for f in status.failovers]
    # The registers' histories go to the checker (the counter's ambiguous increments would
    # only multiply its search; the arithmetic above decides the counter).
    verdict = check(op for op in history.ops if op.kind != "incr")
    tally.add_verdict(verdict.linearizable)
    if not verdict.linearizable:  # kept for the post-mortem, beside the replicas' logs
        dump = cluster.home / "histories.jsonl"
        dump.write_text(history.dump(verdict.bad_keys))
        print(f"chaos: the histories of {verdict.bad_keys} are in {dump}")
    assert acked > 50, "too few increments got through"
    assert len(history.acknowledged("get")) > 50, "too few reads got through"
    assert acked <= counted <= acked + unknown, (acked, unknown, counted)
    # Exactly-once: a write of unknown outcome is repeated under its session number, so none
    # reaches a caller as unknown (the faults last seconds; the client's budget is 10).
    assert not unsure, f"{unsure} writes answered with an unknown outcome: {history.raised[:3]}"
    assert not repeated, f"{repeated} increments answered with a total already given"
    assert max(totals) <= counted
    assert verdict.linearizable, f"not linearizable on {verdict.bad_keys}"
