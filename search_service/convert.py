"""Conversions between protobuf messages and the search service's domain values."""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from imagesearch.search.v1 import search_pb2
from search_service.domain import Collection, ModelKey, ProjectionInfo, Vector
from service_core.errors import InvalidArgument

MAX_KEY_CHARS = 1024


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    converted: dict[str, Any] = json_format.MessageToDict(value)
    return converted


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    converted = struct_pb2.Struct()
    converted.update(value)
    return converted


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    converted = timestamp_pb2.Timestamp()
    converted.FromDatetime(value)
    return converted


def model_key(model: search_pb2.Model, field: str) -> ModelKey:
    """A Model message that must be complete (name and dimension set)."""
    if not model.name or not 1 <= model.dimension <= 65535:
        raise InvalidArgument(f"{field}: a model needs a name and a dimension of 1-65535")
    return ModelKey(model.name, model.version, model.dimension)


def model_message(model: ModelKey | None) -> search_pb2.Model | None:
    if model is None:
        return None
    return search_pb2.Model(name=model.name, version=model.version, dimension=model.dimension)


def check_key(key: str, field: str) -> str:
    if not key:
        raise InvalidArgument(f"{field}: a key is required")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"{field}: key is {len(key)} characters, at most {MAX_KEY_CHARS}")
    if "\x00" in key:
        raise InvalidArgument(f"{field}: key {key!r} contains a NUL character")
    return key


def vector(values: Any, dimension: int, field: str) -> Vector:
    """A finite float32 vector of exactly ``dimension`` components."""
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (dimension,):
        raise InvalidArgument(
            f"{field}: {array.size} values, but the model's vectors have {dimension}"
        )
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise InvalidArgument(
            f"{field}: values must be finite; {array[bad[0]]} at index {int(bad[0])}"
        )
    if not np.any(array):
        raise InvalidArgument(f"{field}: an all-zero vector has no direction to rank by")
    return array


def projection_message(
    live: list[ProjectionInfo], serving_version: int | None
) -> search_pb2.Projection:
    serving = next((p for p in live if p.version == serving_version), None)
    building = any(p.state == "building" for p in live)
    shown = serving or (live[-1] if live else None)
    if building:
        state = search_pb2.PROJECTION_STATE_BUILDING
    elif serving:
        state = search_pb2.PROJECTION_STATE_READY
    else:
        state = search_pb2.PROJECTION_STATE_NONE
    message = search_pb2.Projection(version=serving_version or 0, state=state)
    if shown is not None:
        message.dimensions = shown.dimensions
        message.lists = shown.lists
        message.fitted_on = shown.fitted_on
        message.fitted_at.CopyFrom(timestamp(shown.fitted_at))
    return message


def stats_message(
    collection: Collection, count: int, live: list[ProjectionInfo]
) -> search_pb2.CollectionStats:
    return search_pb2.CollectionStats(
        name=collection.name,
        model=model_message(collection.model),
        image_count=count,
        projection=projection_message(live, collection.serving_version),
        created_at=timestamp(collection.created_at),
    )


def encode_page_token(offset: int, mode: int, version: int) -> str:
    raw = json.dumps({"o": offset, "m": mode, "v": version}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, int, int]:
    """(offset, mode, projection version) from a token made by encode_page_token."""
    try:
        padded = token + "=" * (-len(token) % 4)
        fields = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset, mode, version = int(fields["o"]), int(fields["m"]), int(fields["v"])
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise InvalidArgument("page_token: not a token this service issued") from error
    if offset < 0:
        raise InvalidArgument("page_token: not a token this service issued")
    return offset, mode, version


def similarity(distance: float) -> float:
    """Cosine similarity of two unit vectors from their Euclidean distance."""
    return 1.0 - distance * distance / 2.0 if math.isfinite(distance) else -1.0
