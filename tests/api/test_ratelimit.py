"""The per-client token bucket: burst, refill, Retry-After and the memory bound."""

from __future__ import annotations

from cloud.api.ratelimit import TokenBucketLimiter, retry_after_header


def test_burst_then_refused_until_a_token_refills() -> None:
    limiter = TokenBucketLimiter(burst=3, refill_per_s=0.5, clients_max=10)
    assert [limiter.take("a", 100.0).allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take("a", 100.0)
    assert not refused.allowed and refused.retry_after_s == 2.0
    assert retry_after_header(refused) == "2"
    assert not limiter.take("a", 101.0).allowed
    assert limiter.take("a", 102.1).allowed


def test_clients_are_independent() -> None:
    limiter = TokenBucketLimiter(burst=1, refill_per_s=1, clients_max=10)
    assert limiter.take("a", 0).allowed
    assert not limiter.take("a", 0).allowed
    assert limiter.take("b", 0).allowed


def test_memory_is_bounded_by_forgetting_the_least_recent_client() -> None:
    limiter = TokenBucketLimiter(burst=1, refill_per_s=0.001, clients_max=100)
    for number in range(1000):
        limiter.take(f"10.0.{number // 256}.{number % 256}", float(number))
    assert len(limiter) == 100


def test_a_clock_going_backwards_refills_nothing() -> None:
    limiter = TokenBucketLimiter(burst=1, refill_per_s=1, clients_max=10)
    assert limiter.take("a", 50.0).allowed
    assert not limiter.take("a", 10.0).allowed
