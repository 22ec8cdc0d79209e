"""PostgreSQL-only: what the pool configuration relies on. The pool returns a connection without asyncpg's reset
query (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, one round trip per store call): that is only
sound while no store method leaves session state behind, which these tests hold for the methods of the ring path
and the jobs."""

from __future__ import annotations

import pytest

from sip_controller.state.postgres import PostgresStore
from sip_controller.state.records import CallerLimit, Entry, NewCall, OutboxItem
from tests.state.conftest import T0, Cluster

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_no_store_call_leaves_session_state_on_its_connection(cluster: Cluster) -> None:
    assert cluster.url is not None
    store = await PostgresStore.open(cluster.url, clock=cluster.clock, schema=cluster.schema, pool_size=1)
    cluster.opened.append(store)
    await store.heartbeat("p1", 60, {"host": "h"})
    started = OutboxItem("call.started:rtc_1:jsonl", "jsonl", "call.started", {"call_id": "rtc_1"}, "rtc_1")
    call = NewCall("rtc_1", "p1", "default", {"instructions": "hi"}, T0, caller="+14155550100")
    admitted = await store.admit(
        ["webhook:wh_1", "call:rtc_1"], ttl_s=60, call=call, max_live=10,
        caller=CallerLimit("caller:+14155550100", 5), outbox=[started],
    )  # fmt: skip
    assert admitted.row is not None
    fence = admitted.row.fence
    assert await store.allow_caller("caller:+14155550100", 5)
    await store.append(fence, [Entry("transcript", T0 + 1, {"role": "caller", "text": "hello"})], state="attached")
    await store.create_call(NewCall("rtc_2", "p1", "default", {}, T0), max_live=10, outbox=[])
    await store.finish_call(fence, state="ended", ended_reason="caller_hangup", report={"call_id": "rtc_1"})
    rows = await store.claim_outbox("w1")
    await store.mark_delivered([r.id for r in rows])
    await store.sweep()
    await store.migrate()
    async with store._pool.acquire() as conn:  # the pool's one connection, as the next store call gets it
        assert not conn.is_in_transaction()
        state = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks, "
            "(SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors, "  # this query's own portal is unnamed
            "(SELECT count(*) FROM pg_listening_channels()) AS channels, "
            "current_setting('search_path') AS search_path, "
            "current_setting('application_name') AS application_name"
        )
    assert (state["locks"], state["cursors"], state["channels"]) == (0, 0, 0)
    assert (state["search_path"], state["application_name"]) == (cluster.schema, "sipctl")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_connection_given_back_inside_a_transaction_is_rolled_back(cluster: Cluster) -> None:
    assert cluster.url is not None
    store = await PostgresStore.open(cluster.url, clock=cluster.clock, schema=cluster.schema, pool_size=1)
    cluster.opened.append(store)
    conn = await store._pool.acquire()
    await conn.execute("BEGIN")
    await conn.execute("INSERT INTO claims (key, expires_at) VALUES ('left:open', $1)", T0 + 60)
    await store._pool.release(conn)  # as a cancelled store call would leave it
    async with store._pool.acquire() as again:
        assert not again.is_in_transaction()
    assert await store.claim("left:open", 60) is True  # the insert was rolled back
