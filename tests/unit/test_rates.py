"""Rate strings, as Celery writes them, and the options that use them."""

from __future__ import annotations

import pytest

from celery_durable import ConfigurationError, durable_task, step
from celery_durable.rates import RateSpec


@pytest.mark.parametrize(("text", "count", "period_ms"), [
    ("100/m", 100, 60_000), ("10/s", 10, 1000), ("5/10s", 5, 10_000), ("1000/h", 1000, 3_600_000),
    ("20000/d", 20_000, 86_400_000), ("2.5/s", 2.5, 1000), (" 7 / m ", 7, 60_000), ("3", 3, 1000),
    (4, 4, 1000),
])
def test_rates_parse_like_celery(text: object, count: float, period_ms: int) -> None:
    spec = RateSpec.parse(text)
    assert (spec.count, spec.period_ms, spec.burst) == (count, period_ms, 1)


def test_rates_print_back() -> None:
    assert str(RateSpec.parse("100/m")) == "100/m"
    assert str(RateSpec.parse("5/10s", 3)) == "5/10s"
    assert str(RateSpec.parse("20000/d")) == "20000/d"


@pytest.mark.parametrize("bad", ["", "ten/s", "10/w", "0/s", "-1/s", "10/m/s", True, None])
def test_bad_rates_are_refused_with_the_accepted_forms(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="'100/m'|at least one start"):
        RateSpec.parse(bad)


def test_rate_options_are_checked_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match="rate_limit=...\\) must be a rate"):
        durable_task(rate_limit="fast")(lambda: None)
    with pytest.raises(ConfigurationError, match="needs rate_limit="):
        durable_task(rate_key=lambda: "k")(lambda: None)
    with pytest.raises(ConfigurationError, match="'wait'"):
        durable_task(rate_limit="1/s", rate_mode="sometimes")(lambda: None)
    with pytest.raises(ConfigurationError, match="int >= 1"):
        durable_task(rate_limit="1/s", rate_burst=0)(lambda: None)
    with pytest.raises(ConfigurationError, match="needs rate_limit="):
        step(rate_mode="drop")(lambda: None)
    with pytest.raises(ConfigurationError, match="must be a rate"):
        step(rate_limit="often")(lambda: None)


def test_a_durable_rate_limit_replaces_celerys_per_worker_one() -> None:
    @durable_task(rate_limit="10/m", name="tests.unit.rated")
    def rated() -> None: ...

    assert rated.durable_rate_limit == RateSpec(10, 60_000)
    assert rated.rate_limit is None  # Celery's per-worker limiter stays off
