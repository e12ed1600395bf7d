"""Replaying checkpoints as a resumed attempt does: the one-pass decode of every loaded
checkpoint, and the per-checkpoint fallback that names a broken one."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator

import pytest

from celery_durable import context
from celery_durable.config import DurableSettings
from celery_durable.context import RunContext, bind_context, unbind_context
from celery_durable.errors import CheckpointDecodeError, NondeterminismError
from celery_durable.steps import step
from celery_durable.store import RunStore


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    st = RunStore(DurableSettings(redis_url=store_url(8), key_prefix="rp:"))
    yield st
    st.client.close()


@step(name="piece")
def piece(i: int) -> object:
    raise AssertionError("a replayed step must not execute")


def checkpoint(step_id: str, value: object) -> str:
    return json.dumps({"id": step_id, "v": value, "t0": 1, "t1": 2, "a": 1},
                      separators=(",", ":"))


def replay(store: RunStore, checkpoints: dict[str, str], calls: int) -> list[object]:
    ctx = RunContext(run_id="r", attempt=2, task_name="t", token="tok", owner="o",
                     store=store, checkpoints=checkpoints)
    bound = bind_context(ctx)
    try:
        return [piece(i) for i in range(calls)]
    finally:
        unbind_context(bound)


def test_every_checkpoint_replays_its_value(store: RunStore) -> None:
    when = {"__cd__": "datetime", "v": "2026-12-01T10:00:00+00:00"}
    checkpoints = {"0": checkpoint("piece", {"i": 0}),
                   "1": checkpoint("piece#2", when),
                   "2": checkpoint("piece#3", [1, "two", None])}
    assert replay(store, checkpoints, 3) == [
        {"i": 0}, dt.datetime(2026, 12, 1, 10, tzinfo=dt.timezone.utc), [1, "two", None]]


def test_a_broken_checkpoint_is_named_by_its_position(store: RunStore) -> None:
    checkpoints = {"0": checkpoint("piece", 1), "1": '{"id": "piece#2", "v": 2} trailing',
                   "2": checkpoint("piece#3", 3)}
    with pytest.raises(CheckpointDecodeError, match="position 1"):
        replay(store, checkpoints, 3)
    with pytest.raises(CheckpointDecodeError, match="position 0"):
        replay(store, {"0": "[1, 2]"}, 1)


def test_a_different_step_order_is_reported(store: RunStore) -> None:
    with pytest.raises(NondeterminismError, match="recorded as 'other'"):
        replay(store, {"0": checkpoint("other", 1)}, 1)


def test_values_orjson_refuses_take_the_standard_decoder(store: RunStore) -> None:
    huge = 2**70  # beyond 64 bits: the standard decoder reads it, orjson does not
    checkpoints = {"0": checkpoint("piece", huge), "1": checkpoint("piece#2", float("inf"))}
    assert replay(store, checkpoints, 2) == [huge, float("inf")]


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "standard"])
def test_both_decoders_give_the_same_values(store: RunStore, monkeypatch: pytest.MonkeyPatch,
                                            fast: bool) -> None:
    if not fast:
        monkeypatch.setattr(context, "_fast_loads", None)
    elif context._fast_loads is None:
        pytest.skip("orjson is not installed")
    values: list[object] = [{"i": 1, "s": "é\u2028"}, [1.5, None, True], "text", 0]
    checkpoints = {str(i): checkpoint("piece" if i == 0 else f"piece#{i + 1}", v)
                   for i, v in enumerate(values)}
    assert replay(store, checkpoints, len(values)) == values


# The replay at position 0 decodes every checkpoint; later ones read the decoded records:
# each check must hold at both.
@pytest.mark.parametrize("at", [0, 2], ids=["first replay", "later replay"])
def test_every_replay_checks_its_checkpoint(store: RunStore, at: int) -> None:
    def run(odd: str) -> list[object]:
        checkpoints = {str(i): checkpoint("piece" if i == 0 else f"piece#{i + 1}", i)
                       for i in range(4)}
        checkpoints[str(at)] = odd
        return replay(store, checkpoints, 4)

    own_id = "piece" if at == 0 else f"piece#{at + 1}"
    with pytest.raises(NondeterminismError, match=f"position {at} was recorded as 'other'"):
        run(checkpoint("other", 1))
    with pytest.raises(CheckpointDecodeError, match=f"position {at}"):
        run(json.dumps({"id": own_id, "t0": 1}))  # neither a value nor an offloaded one
    with pytest.raises(CheckpointDecodeError, match=f"position {at}\\).*blob is missing"):
        run(json.dumps({"id": own_id, "o": 1}))  # offloaded: read from the blobs hash
    tagged = {"__cd__": "datetime", "v": "2026-12-01T10:00:00+00:00"}
    assert run(checkpoint(own_id, tagged))[at] == dt.datetime(2026, 12, 1, 10,
                                                              tzinfo=dt.timezone.utc)


def test_each_replayed_step_is_signalled(store: RunStore) -> None:
    from celery_durable import signals

    seen: list[tuple[str, int]] = []

    def heard(sender: object, **fields: object) -> None:
        seen.append((str(fields["step"]), int(fields["position"])))  # type: ignore[call-overload]

    signals.step_replayed.connect(heard, weak=False)
    try:
        checkpoints = {str(i): checkpoint("piece" if i == 0 else f"piece#{i + 1}", i)
                       for i in range(3)}
        assert replay(store, checkpoints, 3) == [0, 1, 2]
    finally:
        signals.step_replayed.disconnect(heard)
    assert seen == [("piece", 0), ("piece#2", 1), ("piece#3", 2)]
