"""Admission: the per-caller rate limit."""

from __future__ import annotations

from sip_controller.calls.admission import CallerRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_caller_rate_limit_is_a_sliding_minute() -> None:
    clock = Clock()
    limiter = CallerRateLimiter(3, clock=clock)
    assert [limiter.allow("+14155550123") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("+14155550999")  # another caller is not affected
    clock.now += 59.9
    assert not limiter.allow("+14155550123")
    clock.now += 0.2
    assert limiter.allow("+14155550123")


def test_refused_attempts_do_not_extend_the_window() -> None:
    clock = Clock()
    limiter = CallerRateLimiter(1, clock=clock)
    assert limiter.allow("+1")
    for _ in range(10):
        clock.now += 5
        assert not limiter.allow("+1")
    clock.now += 10.1
    assert limiter.allow("+1")


def test_off_means_always_allowed() -> None:
    assert all(CallerRateLimiter(0).allow("+1") for _ in range(100))
    limiter = CallerRateLimiter(1, anonymous_per_minute=0)
    assert all(limiter.allow(None) for _ in range(10))


def test_callers_without_a_number_share_one_bucket() -> None:
    """Withholding the caller ID is no way around the limit: 8 anonymous calls with a limit of 3 -> 3 taken."""
    clock = Clock()
    limiter = CallerRateLimiter(3, anonymous_per_minute=3, clock=clock)
    assert [limiter.allow(None if i % 2 else "") for i in range(8)] == [True] * 3 + [False] * 5
    assert limiter.allow("+14155550123")  # a caller with a number has their own bucket
    clock.now += 60.1
    assert limiter.allow(None)


def test_the_anonymous_limit_is_its_own_number() -> None:
    limiter = CallerRateLimiter(1, anonymous_per_minute=5)
    assert limiter.limit_for(None) == 5
    assert limiter.limit_for("+1") == 1
    assert sum(limiter.allow(None) for _ in range(10)) == 5
    assert sum(limiter.allow("+1") for _ in range(10)) == 1


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = CallerRateLimiter(1, clock=clock, max_callers=100)
    for i in range(1000):
        limiter.allow(f"+1{i:010d}")
    assert len(limiter._seen) == 100


def test_forget_takes_back_the_last_counted_call() -> None:
    clock = Clock()
    limiter = CallerRateLimiter(2, anonymous_per_minute=1, clock=clock)
    assert limiter.allow("+1")
    assert limiter.allow("+1")
    limiter.forget("+1")  # the second was a webhook delivered again
    assert limiter.allow("+1")
    assert not limiter.allow("+1")
    assert limiter.allow(None)
    limiter.forget(None)
    assert limiter.allow(None)
    limiter.forget("+never-seen")  # nothing to take back: no error
    off = CallerRateLimiter(0)
    off.forget("+1")  # the limit is off: nothing counted, nothing to take back
    assert off.allow("+1")
