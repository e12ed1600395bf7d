"""JSON codec for checkpoints: faithful round trips of common Python types, never pickle.

JSON types pass through unchanged. Other values become a tagged object ``{"__cd__": tag, ...}``:
tuples, sets, bytes, datetimes, dates, times, timedeltas, UUIDs, Decimals, enums, dicts with
non-string keys, dataclasses and pydantic models (the last three by import path, so their
class must be importable where the checkpoint is read). A user dict that happens to contain
the key ``"__cd__"`` is escaped, so user data can never be mistaken for a tag.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from .errors import CheckpointDecodeError, CheckpointEncodeError

TAG = "__cd__"
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class Codec(Protocol):
    """The seam for checkpoint encodings: a value to a str and back."""

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class Unencodable(TypeError):
    """Internal: ``value`` (at ``path``) has a type the codec cannot encode."""

    def __init__(self, value: Any, path: str) -> None:
        super().__init__(f"{type(value).__module__}.{type(value).__qualname__} at {path}")
        self.value = value
        self.path = path


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> type:
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CheckpointDecodeError(
            f"checkpoint refers to class {path!r}, which cannot be imported here: "
            "deploy the module that defines it on every worker",
            cls=path,
        ) from exc
    if not isinstance(obj, type):
        raise CheckpointDecodeError(f"checkpoint class {path!r} is not a class", cls=path)
    return obj


_SCALARS = (str, int, float, bool, type(None))


def to_jsonable(value: Any, path: str = "$") -> Any:
    """Return a JSON-compatible form of ``value``; raise Unencodable naming the bad part."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: to_jsonable(v, f"{path}.{k}") for k, v in value.items()}
        return {
            TAG: "dict",
            "items": [
                [to_jsonable(k, f"{path}<key>"), to_jsonable(v, f"{path}[{k!r}]")]
                for k, v in value.items()
            ],
        }
    return _encode_other(value, path)


def _encode_other(value: Any, path: str) -> Any:  # noqa: C901 - a flat type switch
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
        return {TAG: "pydantic", "cls": _class_path(type(value)), "v": data}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: to_jsonable(getattr(value, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(value)
        }
        return {TAG: "dataclass", "cls": _class_path(type(value)), "v": fields}
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "cls": _class_path(type(value)), "v": to_jsonable(value.value, path)}
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, set | frozenset):
        tag = "frozenset" if isinstance(value, frozenset) else "set"
        return {TAG: tag, "v": [to_jsonable(v, f"{path}{{}}") for v in value]}
    if isinstance(value, bytes | bytearray):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, str | int | float | list | dict):  # subclasses of JSON types
        return to_jsonable(_plain(value), path)
    raise Unencodable(value, path)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list):
        return list(value)
    return dict(value)


def _decode_dataclass(obj: dict[str, Any]) -> Any:
    cls = _import_class(obj["cls"])
    values = {k: from_jsonable(v) for k, v in obj["v"].items()}
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    inst = cls(**{k: v for k, v in values.items() if k in init})
    for name, value in values.items():
        if name not in init:
            object.__setattr__(inst, name, value)
    return inst


def _decode_pydantic(obj: dict[str, Any]) -> Any:
    cls = _import_class(obj["cls"])
    if not issubclass(cls, BaseModel):
        raise CheckpointDecodeError(f"checkpoint class {obj['cls']!r} is not a pydantic model")
    return cls.model_validate(obj["v"])


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "dict": lambda o: {from_jsonable(k): from_jsonable(v) for k, v in o["items"]},
    "tuple": lambda o: tuple(from_jsonable(v) for v in o["v"]),
    "set": lambda o: {from_jsonable(v) for v in o["v"]},
    "frozenset": lambda o: frozenset(from_jsonable(v) for v in o["v"]),
    "bytes": lambda o: base64.b64decode(o["v"]),
    "datetime": lambda o: dt.datetime.fromisoformat(o["v"]),
    "date": lambda o: dt.date.fromisoformat(o["v"]),
    "time": lambda o: dt.time.fromisoformat(o["v"]),
    "timedelta": lambda o: dt.timedelta(days=o["v"][0], seconds=o["v"][1], microseconds=o["v"][2]),
    "uuid": lambda o: uuid.UUID(o["v"]),
    "decimal": lambda o: decimal.Decimal(o["v"]),
    "enum": lambda o: _import_class(o["cls"])(from_jsonable(o["v"])),
    "dataclass": _decode_dataclass,
    "pydantic": _decode_pydantic,
}


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable`."""
    kind = type(value)
    if kind is list:
        return [from_jsonable(v) for v in value]
    if kind is dict:
        tag = value.get(TAG)
        if tag is None:
            return {k: from_jsonable(v) for k, v in value.items()}
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise CheckpointDecodeError(
                f"unknown checkpoint type tag {tag!r}: written by a newer celery-durable?",
                tag=tag,
            )
        try:
            return decoder(value)
        except CheckpointDecodeError:
            raise
        except Exception as exc:
            raise CheckpointDecodeError(
                f"cannot decode a {tag!r} checkpoint value: {exc}", tag=tag
            ) from exc
    return value


class JsonCodec:
    """The default codec: compact JSON of :func:`to_jsonable`."""

    def dumps(self, value: Any) -> str:
        return _encoder.encode(to_jsonable(value))

    def loads(self, text: str) -> Any:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CheckpointDecodeError(f"checkpoint is not valid JSON: {exc}") from exc
        return from_jsonable(data)


def describe_unencodable(err: Unencodable, what: str) -> CheckpointEncodeError:
    """Turn an internal Unencodable into the user-facing error for ``what`` (a step, a task)."""
    tname = f"{type(err.value).__module__}.{type(err.value).__qualname__}"
    return CheckpointEncodeError(
        f"{what} returned a value of type {tname} (at {err.path}) that cannot be stored as "
        "JSON: return JSON types, dataclasses, pydantic models, datetimes, bytes, UUIDs, "
        "Decimals or enums, or convert the value first",
        type=tname,
        path=err.path,
    )
