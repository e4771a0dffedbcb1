"""Conversions between protobuf messages and the search service's domain values."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from imagesearch.search.v1 import search_pb2
from search_service.domain import Collection, ModelKey, ProjectionInfo, Vector
from service_core.errors import InvalidArgument

MAX_KEY_CHARS = 1024
# PostgreSQL refuses btree index entries over 2,704 bytes (a third of a page); 1,024
# emoji are 4,096 bytes of UTF-8. 2,000 leaves room for the entry's other columns.
MAX_KEY_BYTES = 2000
# JSON levels a metadata or filter object may nest. protobuf's parser stops at 100
# nested messages and each JSON level costs about three (Struct, map entry, Value):
# an IngestRequest stops parsing past 32 levels, for every item in it at once. Below
# that, this bound refuses the one item, by name; real metadata is never this deep.
MAX_DEPTH = 20
# Page tokens are short; anything longer is not one of ours, and is refused unread.
MAX_PAGE_TOKEN_CHARS = 512
MAX_INT32 = 2**31 - 1
# Reasons (docs/errors.md) of a metadata or filter object PostgreSQL could not store.
_DEEP = "JSON_TOO_DEEP"
_NOT_JSON = "NOT_JSON"
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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


def model_key(model: search_pb2.Model, field: str, *, path: str | None = None) -> ModelKey:
    """A Model message that must be complete (name and dimension set).

    ``field`` names it in messages, ``path`` (``field`` when not given) in the
    BadRequest field violation.
    """
    if not model.name or not 1 <= model.dimension <= 65535:
        raise InvalidArgument(
            f"{field}: a model needs a name and a dimension of 1-65535",
            reason="INVALID_MODEL",
            field=path or field,
        )
    return ModelKey(model.name, model.version, model.dimension)


def model_message(model: ModelKey | None) -> search_pb2.Model | None:
    if model is None:
        return None
    return search_pb2.Model(name=model.name, version=model.version, dimension=model.dimension)


def check_key(key: str, field: str) -> str:
    if not key:
        raise InvalidArgument(f"{field}: a key is required", reason="KEY_REQUIRED", field=field)
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(
            f"{field}: key is {len(key)} characters, at most {MAX_KEY_CHARS}",
            reason="KEY_TOO_LONG",
            field=field,
        )
    if "\x00" in key:
        raise InvalidArgument(
            f"{field}: key {_short(key)} contains a NUL character",
            reason="INVALID_KEY",
            field=field,
        )
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(
            f"{field}: key {_short(key)} is {size} bytes of UTF-8, at most {MAX_KEY_BYTES}",
            reason="KEY_TOO_LONG",
            field=field,
        )
    return key


def check_collection_name(name: str, field: str = "collection") -> str:
    """A collection name as lookups take it: empty means the default collection.

    Anything that could not have been created (a NUL, a slash, 200 characters) is
    refused here rather than sent to PostgreSQL, which fails on NUL.
    """
    if name and not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            f"{field}: {_short(name)} is not a valid collection name (1-63 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit)",
            reason="INVALID_COLLECTION_NAME",
            field=field,
        )
    return name


def _short(text: str, most: int = 64) -> str:
    """``text`` quoted for a message, cut to ``most`` characters."""
    return repr(text) if len(text) <= most else repr(text[:most]) + f"... ({len(text)} chars)"


def struct_value(
    value: struct_pb2.Struct, field: str, *, max_bytes: int = 0, path: str | None = None
) -> dict[str, Any]:
    """A metadata or filter Struct as a dict PostgreSQL's jsonb will store.

    Refused with InvalidArgument naming the path: NUL in a key or string (jsonb
    cannot hold U+0000), NaN or infinity (JSON has no such numbers), nesting deeper
    than MAX_DEPTH, and, when ``max_bytes`` is set, a JSON encoding larger than it.
    The message names the JSON path below ``field``; the field violation names
    ``path`` (``field`` when not given), the Struct field itself.
    """
    try:
        converted = _struct(value, field, 1)
    except InvalidArgument as error:
        error.field = path or field
        raise
    if max_bytes:
        size = len(json.dumps(converted, ensure_ascii=False, separators=(",", ":")).encode())
        if size > max_bytes:
            raise InvalidArgument(
                f"{field}: {size} bytes of JSON, at most {max_bytes}",
                reason="METADATA_TOO_LARGE",
                field=path or field,
                metadata={"limit": str(max_bytes)},
            )
    return converted


def _struct(value: struct_pb2.Struct, path: str, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{path}: nested deeper than {MAX_DEPTH} levels", reason=_DEEP)
    converted: dict[str, Any] = {}
    for key, item in value.fields.items():
        if "\x00" in key:
            raise InvalidArgument(
                f"{path}: key {_short(key)} contains a NUL character", reason=_NOT_JSON
            )
        converted[key] = _value(item, f"{path}.{key}", depth)
    return converted


def _value(value: struct_pb2.Value, path: str, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _struct(value.struct_value, path, depth + 1)
    if kind == "list_value":
        if depth + 1 > MAX_DEPTH:
            raise InvalidArgument(f"{path}: nested deeper than {MAX_DEPTH} levels", reason=_DEEP)
        return [_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value.list_value.values)]
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(
                f"{path}: {number} is not a number JSON can hold", reason=_NOT_JSON
            )
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        if "\x00" in value.string_value:
            raise InvalidArgument(f"{path}: the string contains a NUL character", reason=_NOT_JSON)
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or a Value with nothing set


def vector(values: Any, dimension: int, field: str, *, path: str | None = None) -> Vector:
    """A finite float32 vector of exactly ``dimension`` components.

    ``field`` names it in messages, ``path`` (``field`` when not given) in the
    BadRequest field violation: the repeated field of the values themselves.
    """
    path = path or field
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (dimension,):
        raise InvalidArgument(
            f"{field}: {array.size} values, but the model's vectors have {dimension}",
            reason="VECTOR_LENGTH_MISMATCH",
            field=path,
            metadata={"expected": str(dimension), "actual": str(array.size)},
        )
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise InvalidArgument(
            f"{field}: values must be finite; {array[bad[0]]} at index {int(bad[0])}",
            reason="VECTOR_NOT_FINITE",
            field=f"{path}[{int(bad[0])}]",
        )
    if not np.any(array):
        raise InvalidArgument(
            f"{field}: an all-zero vector has no direction to rank by",
            reason="VECTOR_ALL_ZERO",
            field=path,
        )
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


def query_binding(request: search_pb2.SearchRequest) -> bytes:
    """What a page token is bound to: the search request less its token and page size.

    Deterministic serialization, so the same query always binds the same way; the
    mode and projection version are bound by the token's own fields.
    """
    unbound = search_pb2.SearchRequest()
    unbound.CopyFrom(request)
    unbound.page_token = ""
    unbound.top_k = 0
    return hashlib.sha256(unbound.SerializeToString(deterministic=True)).digest()


def _tag(key: bytes, payload: bytes, binding: bytes) -> bytes:
    return hmac.new(key, payload + b"\0" + binding, hashlib.sha256).digest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())


def encode_page_token(
    offset: int, mode: int, version: int, *, key: bytes = b"", binding: bytes = b""
) -> str:
    """A token for the page at ``offset``, signed with ``key`` over ``binding``.

    ``binding`` (query_binding of the request) ties the token to its collection and
    query, the fields to its mode and projection version: a token from another search
    fails the signature. ``key`` is a secret of the deployment, so that callers
    cannot mint tokens for offsets or versions they choose.
    """
    payload = json.dumps({"o": offset, "m": mode, "v": version}, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_tag(key, payload, binding))}"


def decode_page_token(
    token: str, *, key: bytes = b"", binding: bytes = b""
) -> tuple[int, int, int]:
    """(offset, mode, projection version) from a token encode_page_token made for this query."""
    refused = InvalidArgument(
        "page_token: not a token this service issued for this search",
        reason="INVALID_PAGE_TOKEN",
        field="page_token",
    )
    if len(token) > MAX_PAGE_TOKEN_CHARS or token.count(".") != 1:
        raise refused
    payload_text, tag_text = token.split(".")
    try:
        payload, tag = _unb64(payload_text), _unb64(tag_text)
    except (ValueError, binascii.Error) as error:
        raise refused from error
    if not hmac.compare_digest(tag, _tag(key, payload, binding)):
        raise refused
    try:
        fields = json.loads(payload)
        values = [fields["o"], fields["m"], fields["v"]]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise refused from error
    # bool is an int to Python; 1e400 parses as a float infinity; both are refused.
    if not all(type(v) is int and 0 <= v <= MAX_INT32 for v in values):
        raise refused
    offset, mode, version = values
    return offset, mode, version


def similarity(distance: float) -> float:
    """Cosine similarity of two unit vectors from their Euclidean distance."""
    return 1.0 - distance * distance / 2.0 if math.isfinite(distance) else -1.0
