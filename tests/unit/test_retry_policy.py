"""RetryPolicy: validation, backoff, which errors retry."""

from __future__ import annotations

from datetime import timedelta

import pytest

from celery_durable import ConfigurationError, NondeterminismError, NonRetryableError, RetryPolicy


def test_defaults_match_the_contract() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.factor, p.min_delay, p.max_delay, p.jitter) == (3, 2.0, 1.0, 60.0,
                                                                              True)
    assert p.retry_on == (Exception,) and p.give_up_on == ()


def test_backoff_is_exponential_and_capped() -> None:
    p = RetryPolicy(max_attempts=10, factor=2, min_delay=1, max_delay=5, jitter=False)
    assert [p.delay_for(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_stays_within_half_and_full_delay() -> None:
    p = RetryPolicy(factor=3, min_delay=2, max_delay=100, jitter=True)
    for _ in range(200):
        assert 3.0 <= p.delay_for(2) <= 6.0


def test_timedelta_delays() -> None:
    p = RetryPolicy(min_delay=timedelta(milliseconds=500), max_delay=timedelta(minutes=1))
    assert (p.min_delay, p.max_delay) == (0.5, 60.0)


def test_which_errors_retry() -> None:
    p = RetryPolicy(max_attempts=3, retry_on=(OSError,), give_up_on=(FileNotFoundError,))
    assert p.should_retry(ConnectionError(), 1)
    assert not p.should_retry(ConnectionError(), 3)  # attempts exhausted
    assert not p.should_retry(FileNotFoundError(), 1)
    assert not p.should_retry(ValueError(), 1)
    assert not RetryPolicy().should_retry(NonRetryableError("no"), 1)
    assert not RetryPolicy().should_retry(NondeterminismError("code changed"), 1)
    assert not RetryPolicy().should_retry(KeyboardInterrupt(), 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_attempts": 0}, "max_attempts must be >= 1"),
    ({"max_attempts": 2.5}, "max_attempts must be an int"),
    ({"factor": 0.5}, "factor must be >= 1"),
    ({"min_delay": -1}, "min_delay must be a finite number"),
    ({"min_delay": "1s"}, "min_delay must be a number of seconds"),
    ({"min_delay": 10, "max_delay": 5}, "max_delay .* must be >= min_delay"),
    ({"retry_on": ("ValueError",)}, "retry_on must hold exception classes"),
])
def test_invalid_policies_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
