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
