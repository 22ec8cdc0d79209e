"""Tests for sip_controller.state.store: MemoryStore claims with TTLs, release, bounded memory."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.state.store import MemoryStore, StateStore


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_claim_once() -> None:
    store = MemoryStore(clock=FakeClock())
    assert await store.claim("wh_1", 60) is True
    assert await store.claim("wh_1", 60) is False
    assert await store.claim("wh_1", 60) is False
    assert await store.claim("wh_2", 60) is True
    assert len(store) == 2


@pytest.mark.anyio
async def test_claim_expires_with_the_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert await store.claim("call:rtc_1", 10)
    clock.now += 9.999
    assert await store.claim("call:rtc_1", 10) is False
    clock.now += 0.001  # exactly at expiry the key is free again
    assert await store.claim("call:rtc_1", 10) is True
    clock.now += 5
    assert await store.claim("call:rtc_1", 10) is False


@pytest.mark.anyio
async def test_failed_claim_does_not_extend_the_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert await store.claim("k", 10)
    clock.now += 8
    assert not await store.claim("k", 10)
    clock.now += 2
    assert await store.claim("k", 10)


@pytest.mark.anyio
async def test_release_frees_the_key() -> None:
    store = MemoryStore(clock=FakeClock())
    assert await store.claim("k", 60)
    await store.release("k")
    assert len(store) == 0
    assert await store.claim("k", 60) is True
    await store.release("never-claimed")  # no error
    assert len(store) == 1


@pytest.mark.anyio
async def test_sweep_keeps_memory_bounded() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, sweep_every=16)
    peak = 0
    for i in range(2000):
        assert await store.claim(f"wh_{i}", 5.0)
        clock.now += 1.0
        peak = max(peak, len(store))
    # only keys from the last sweep window (plus the 5 s TTL) can be alive
    assert peak <= 16 + 5
    assert len(store) <= 16 + 5


@pytest.mark.anyio
async def test_sweep_keeps_live_keys() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, sweep_every=4)
    assert await store.claim("long", 1000)
    for i in range(20):
        clock.now += 10
        assert await store.claim(f"short_{i}", 1)
    assert await store.claim("long", 1000) is False


def test_memory_store_satisfies_the_protocol() -> None:
    store: StateStore = MemoryStore()
    assert isinstance(store, MemoryStore)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["claim", "release", "tick"]), st.sampled_from("abcde"), st.integers(1, 20)),
        max_size=60,
    )
)
def test_matches_a_simple_model(ops: list[tuple[str, str, int]]) -> None:
    """Against a dict model: a claim succeeds exactly when the key is absent or expired."""

    async def run() -> None:
        clock = FakeClock(0.0)
        store = MemoryStore(clock=clock, sweep_every=3)
        model: dict[str, float] = {}
        for op, key, n in ops:
            if op == "tick":
                clock.now += n
            elif op == "release":
                await store.release(key)
                model.pop(key, None)
            else:
                expected = key not in model or model[key] <= clock.now
                assert await store.claim(key, float(n)) is expected
                if expected:
                    model[key] = clock.now + n
        live = {k for k, exp in model.items() if exp > clock.now}
        assert len(store) >= len(live)

    asyncio.run(run())
