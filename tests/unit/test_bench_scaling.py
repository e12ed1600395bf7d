"""bench.limits_measure.scaling: how the polling benchmarks judge busy polling."""

from __future__ import annotations

from typing import Any

from bench.limits_measure import scaling


def level(per_command: dict[str, float]) -> dict[str, Any]:
    total = sum(per_command.values())
    return {"top_level_total": {"median": total}, "all_commands_total": {"median": total},
            "redis_usec_total": {"median": total * 10},
            "top_level": dict(per_command), "calls": dict(per_command),
            "usec": {name: rate * 10 for name, rate in per_command.items()}}


QUIET = {"zrangebyscore": 12.0, "brpop": 2.0, "zadd": 2.0, "pexpire": 2.0}


def test_health_check_pings_landing_in_one_level_are_not_busy_polling() -> None:
    levels = {0: level(QUIET), 10: level(QUIET), 50: level({**QUIET, "ping": 0.6})}
    result = scaling(levels, threshold=1.0)
    assert result["left_out"] == ["ping"]
    assert result["all_commands_total"]["per_parked_run"] == 0.0
    assert result["grew"] == {}
    assert result["busy_polling"] is False


def test_commands_growing_with_the_waiting_runs_are_busy_polling() -> None:
    # Every waiting run polled once every 10 s: +4/s from 10 to 50 waiting runs.
    levels = {0: level(QUIET), 10: level({**QUIET, "evalsha": 1.0}),
              50: level({**QUIET, "evalsha": 5.0})}
    result = scaling(levels, threshold=1.0)
    assert result["compared"] == [10, 50]
    assert result["all_commands_total"]["per_parked_run"] == 0.1
    assert result["grew"] == {"top_level:evalsha": 4.0, "calls:evalsha": 4.0}
    assert result["busy_polling"] is True


def test_exactly_the_threshold_is_not_above_it() -> None:
    # The 50-run level's windows caught ten maintenance commands once each (+0.1/s each)
    # and health-check PINGs: 1.0/s added, which sums to 1.0000000000000142 in floats and
    # must read as 1.0, the threshold itself.
    sweep = {f"maintenance{i}": 0.1 for i in range(10)}
    levels = {0: level(QUIET), 10: level(QUIET), 50: level({**QUIET, **sweep, "ping": 0.6})}
    result = scaling(levels, threshold=1.0)
    assert result["all_commands_total"]["per_parked_run"] * 40 > 1.0  # the float error
    assert result["added_per_s"] == 1.0
    assert result["busy_polling"] is False
