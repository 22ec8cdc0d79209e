"""Retry policies for OpenAI's call endpoints (stamina: jittered exponential backoff, bounded in time).

- accept: within the ring budget, retry transport errors, timeouts, 429 (honouring Retry-After) and 5xx;
  a 404 ``call_id_not_found`` is retried briefly (it has been reported as a race right after the webhook);
  anything else (400: the body was refused) is final.
- hangup and refer: a few quick tries; a hangup of a call that is already gone counts as done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import stamina

from sip_controller.realtime.rest import CallGone, OpenAIError, RateLimited, RealtimeCalls, ServerError, TransportError


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff shape; tests shrink the waits, production keeps the defaults."""

    wait_initial: float = 0.05
    wait_max: float = 1.0
    wait_jitter: float = 0.1
    #: how long a 404 right after the webhook is still retried as a possible race
    gone_grace_s: float = 1.5
    #: attempts for hangup / refer
    attempts: int = 4
    #: total time for hangup / refer retries
    timeout_s: float = 6.0


DEFAULT_POLICY = RetryPolicy()
T = TypeVar("T")


def _transient(exc: Exception) -> bool | float:
    if isinstance(exc, RateLimited):
        return exc.retry_after if exc.retry_after is not None else True
    return isinstance(exc, ServerError | TransportError)


def ambiguous(exc: OpenAIError) -> bool:
    """True when OpenAI may have carried out the request although it failed: no answer came (a timeout, a reset
    connection) or a 5xx (a gateway's error says nothing of what happened behind it). A retry of such an accept
    may be told ``call_already_accepted``: the first try went through."""
    return isinstance(exc, TransportError | ServerError)


async def _within(deadline: float, clock: Callable[[], float], operation: Awaitable[None]) -> None:
    """Run one attempt, cut short by the deadline (as a TransportError, so it is final or retried alike)."""
    remaining = deadline - clock()
    try:
        async with asyncio.timeout(remaining):
            await operation
    except TimeoutError:
        raise TransportError("accept", 0, "ring budget exhausted during the request") from None


async def accept_within_budget(
    api: RealtimeCalls,
    call_id: str,
    body: dict[str, Any],
    *,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    policy: RetryPolicy = DEFAULT_POLICY,
    on_retry: Callable[[OpenAIError], None] | None = None,
) -> int:
    """Accept, retrying what may pass until ``deadline`` (a ``clock()`` value). Returns the attempts made;
    raises the last OpenAIError when the call cannot be accepted."""
    started = clock()
    last: list[OpenAIError] = []

    def retry_on(exc: Exception) -> bool | float:
        if not isinstance(exc, OpenAIError):
            return False
        last[:] = [exc]
        decision: bool | float = _transient(exc)
        if isinstance(exc, CallGone) and clock() - started < policy.gone_grace_s:
            decision = True
        if decision is not False:
            wait = decision if not isinstance(decision, bool) else 0.0
            if clock() + wait >= deadline:
                return False  # the caller would have given up before the next try
            if on_retry is not None:
                on_retry(exc)
        return decision

    if deadline - started <= 0:
        raise TransportError("accept", 0, "ring budget exhausted before the accept could start")

    attempts = 0

    async def once() -> None:
        nonlocal attempts
        if clock() >= deadline and last:
            raise last[0]  # the budget ran out while waiting: report what actually failed
        attempts += 1
        await _within(deadline, clock, api.accept(call_id, body))

    await retrying(once, retry_on, policy, attempts=None, timeout_s=deadline - started)
    return attempts


async def retrying(
    operation: Callable[[], Awaitable[T]],
    on: Callable[[Exception], bool | float],
    policy: RetryPolicy,
    *,
    attempts: int | None,
    timeout_s: float,
) -> T:
    """``operation()`` until it succeeds or ``on(exc)`` says False (a float: wait that long first), within
    ``attempts`` tries and ``timeout_s``. The first try runs bare: nearly every request passes at once, and
    stamina's machinery costs CPU on the path of every call; only a retry enters it."""
    started = time.monotonic()
    try:
        return await operation()
    except Exception as exc:
        decision = on(exc)
        if decision is False or attempts == 1:
            raise
    await asyncio.sleep(policy.wait_initial if isinstance(decision, bool) else decision)
    async for attempt in stamina.retry_context(
        on=on,
        attempts=None if attempts is None else attempts - 1,
        timeout=max(0.0, timeout_s - (time.monotonic() - started)),
        wait_initial=policy.wait_initial,
        wait_max=policy.wait_max,
        wait_jitter=policy.wait_jitter,
    ):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


async def with_retries(
    operation: Callable[[], Awaitable[T]], policy: RetryPolicy = DEFAULT_POLICY, *, attempts: int, timeout_s: float
) -> T:
    """``operation()`` with the calls API's policy for what may pass on a second try (transport errors, timeouts,
    429 honouring Retry-After, 5xx; never a 4xx): the Responses API's requests (#17) go through it."""
    return await retrying(operation, _transient, policy, attempts=attempts, timeout_s=timeout_s)


async def with_quick_retries(operation: Callable[[], Awaitable[None]], policy: RetryPolicy = DEFAULT_POLICY) -> None:
    """For hangup and refer: retry transient failures a few times (never a 404 or a 400)."""
    await retrying(operation, _transient, policy, attempts=policy.attempts, timeout_s=policy.timeout_s)
