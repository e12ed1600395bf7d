"""The JSON checkpoint codec: faithful round trips, clear errors, no pickle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid

import pytest
from pydantic import BaseModel

from celery_durable.codec import JsonCodec, Unencodable, to_jsonable
from celery_durable.errors import CheckpointDecodeError


class Color(enum.Enum):
    RED = "red"


class Item(BaseModel):
    sku: str
    when: dt.datetime


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: tuple[int, ...]


codec = JsonCodec()


@pytest.mark.parametrize("value", [
    None, True, 3, 2.5, "héllo", [1, [2, 3]], {"a": {"b": [1]}},
    (1, "a", (2,)), {1, 2}, frozenset({"x"}), b"\x00\xffbytes", bytearray(b"ab"),
    dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC), dt.date(2026, 2, 3), dt.time(4, 5, 6),
    dt.timedelta(days=1, seconds=2, microseconds=3), uuid.UUID(int=7),
    decimal.Decimal("1.10"), Color.RED, {1: "int key", (1, 2): "tuple key"},
    {"__cd__": "user data that looks like a tag"}, Point(1, (2, 3)),
    Item(sku="x", when=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
])
def test_round_trip(value: object) -> None:
    decoded = codec.loads(codec.dumps(value))
    assert decoded == value
    assert type(decoded) is (bytes if isinstance(value, bytearray) else type(value))


def test_unencodable_names_type_and_path() -> None:
    with pytest.raises(Unencodable) as info:
        to_jsonable({"rows": [1, object()]})
    assert info.value.path == "$.rows[1]"
    assert "builtins.object" in str(info.value)


def test_unknown_tag_and_missing_class_are_decode_errors() -> None:
    with pytest.raises(CheckpointDecodeError, match="unknown checkpoint type tag"):
        codec.loads('{"__cd__": "martian"}')
    with pytest.raises(CheckpointDecodeError, match="cannot be imported"):
        codec.loads('{"__cd__": "dataclass", "cls": "nowhere.module:Gone", "v": {}}')
    with pytest.raises(CheckpointDecodeError, match="not valid JSON"):
        codec.loads("{not json")


# -- the plain-JSON fast path (orjson when installed) ------------------------------------

PLAIN = [
    None, True, False, 0, -(2**63), 2**64 - 1, 1.5, -0.0, 1e16, 5e-324, "", "héllo \u2028 \x00",
    [], {}, [1, [2, [3.25]]], {"a": {"b": [1, None, "x"]}, "ü": True},
]
NOT_PLAIN = [
    float("nan"), float("inf"), 2**64, -(2**63) - 1, (1, 2), {1: "a"}, {"__cd__": "x"},
    [1, {"ok": [float("-inf")]}], {"when": dt.date(2026, 1, 1)}, Color.RED, b"x",
]


@pytest.mark.parametrize("value", PLAIN)
def test_plain_values_are_plain_and_encode_to_the_same_json(value: object) -> None:
    import json

    from celery_durable.codec import dumps_json, is_plain

    assert is_plain(value)
    assert to_jsonable(value) is value  # no copy, no walk
    text = dumps_json(value)
    assert json.loads(text) == value and json.loads(text) == json.loads(json.dumps(value))


@pytest.mark.parametrize("value", NOT_PLAIN, ids=repr)
def test_other_values_take_the_standard_path_and_round_trip_as_before(value: object) -> None:
    import math

    from celery_durable.codec import is_plain

    assert not is_plain(value)
    decoded = codec.loads(codec.dumps(value))
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(decoded)
    else:
        assert decoded == value


def test_nesting_deeper_than_orjson_allows_is_not_plain_and_still_encodes() -> None:
    from celery_durable.codec import is_plain

    deep: list[object] = []
    for _ in range(300):
        deep = [deep]
    assert not is_plain(deep)
    assert codec.loads(codec.dumps(deep)) == deep


def test_a_string_orjson_refuses_falls_back_to_the_standard_encoder() -> None:
    from celery_durable.codec import dumps_json

    assert dumps_json(["\ud800"]) == '["\ud800"]'  # a lone surrogate, as before


def test_without_orjson_the_standard_encoder_writes_plain_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import celery_durable.codec as module

    monkeypatch.setattr(module, "_fast_dumps", None)
    assert module.dumps_json({"a": [1, 2.5, "é"]}) == '{"a":[1,2.5,"é"]}'
