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
import math
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from .errors import CheckpointDecodeError, CheckpointEncodeError

TAG = "__cd__"
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

_fast_dumps: Callable[[Any], bytes] | None
try:  # the optional "orjson" extra: plain JSON values are encoded by it
    from orjson import JSONEncodeError as _FastEncodeError
    from orjson import dumps as _fast_dumps
except ImportError:  # pragma: no cover - depends on the environment
    _fast_dumps = None
    _FastEncodeError = TypeError  # type: ignore[assignment,misc]

#: The ints orjson encodes (64 bits, signed or unsigned) and how deep it nests; larger or
#: deeper values go to the standard encoder.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_MAX_DEPTH = 200


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


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON already, in the form :func:`to_jsonable` leaves as it is:
    str, int (64 bits), finite float, bool, None, and lists and str-keyed dicts (without the
    tag key) of those. Such a value needs no conversion, and orjson's text of it decodes to
    what the standard encoder's does."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if kind is float:
        return math.isfinite(value)
    if depth >= _MAX_DEPTH:
        return False
    if kind is list:
        for item in value:
            if not is_plain(item, depth + 1):
                return False
        return True
    if kind is dict:
        if TAG in value:
            return False
        for key, item in value.items():
            if type(key) is not str or not is_plain(item, depth + 1):
                return False
        return True
    return False


def dumps_json(value: Any, *, plain: bool | None = None) -> str:
    """Compact JSON text of a :func:`to_jsonable` result: by orjson when it is installed
    and the value is plain (``plain``: the caller checked already), else by the standard
    encoder (which also writes NaN and ints of any size, as before)."""
    if _fast_dumps is not None and (plain if plain is not None else is_plain(value)):
        try:
            return _fast_dumps(value).decode()
        except _FastEncodeError:
            pass  # a str orjson refuses (a lone surrogate): the standard encoder decides
    return _encoder.encode(value)


def to_jsonable(value: Any, path: str = "$") -> Any:
    """Return a JSON-compatible form of ``value``; raise Unencodable naming the bad part."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if (kind is dict or kind is list) and is_plain(value):
        return value  # nothing to convert: skip the walk that names each part's path
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
        if is_plain(value):
            return dumps_json(value, plain=True)
        return dumps_json(to_jsonable(value))

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
