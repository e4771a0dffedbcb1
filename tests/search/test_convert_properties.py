"""Property tests: every input to the request validators is accepted or INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagesearch.search.v1 import search_pb2
from search_service import convert
from service_core.errors import InvalidArgument

# Each property runs a few hundred examples: well under a minute for the whole file.
# Derandomized: CI runs the same examples every time, so a failure is reproducible.
quick = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

KEY = b"deployment secret"


def build_value(value: Any) -> struct_pb2.Value:
    built = struct_pb2.Value()
    if isinstance(value, dict):
        built.struct_value.CopyFrom(build_struct(value))
    elif isinstance(value, list):
        built.list_value.values.extend(build_value(v) for v in value)
    elif isinstance(value, bool):
        built.bool_value = value
    elif isinstance(value, int | float):
        built.number_value = float(value)
    elif isinstance(value, str):
        built.string_value = value
    else:
        built.null_value = struct_pb2.NULL_VALUE
    return built


def build_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    built = struct_pb2.Struct()
    for key, item in value.items():
        built.fields[key].CopyFrom(build_value(item))
    return built


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


scalars = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**60), 2**60)
    | st.text()
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)
objects = st.dictionaries(st.text(), json_like, max_size=6)


def json_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def clean(value: Any) -> bool:
    """True for values with no NUL, no NaN or infinity, and within MAX_DEPTH."""

    def walk(item: Any, depth: int) -> bool:
        if isinstance(item, dict):
            return depth <= convert.MAX_DEPTH and all(
                "\x00" not in k and walk(v, depth + 1) for k, v in item.items()
            )
        if isinstance(item, list):
            return depth <= convert.MAX_DEPTH and all(walk(v, depth + 1) for v in item)
        if isinstance(item, float):
            return math.isfinite(item)
        if isinstance(item, str):
            return "\x00" not in item
        return True

    return walk(value, 0)


@quick
@given(objects)
@example({"": -0.0})  # found by an earlier, random run
def test_metadata_is_stored_as_sent_or_refused_as_invalid(value: dict[str, Any]) -> None:
    struct = build_struct(value)
    try:
        converted = convert.struct_value(struct, "metadata")
    except InvalidArgument as refused:
        why = refused.message
    else:
        why = ""
    if why:
        assert why.startswith("metadata")
        assert not clean(value)
        return
    assert clean(value)
    # What is stored comes back as the Struct the caller sent (-0.0 as 0: JSON numbers).
    sent = json_format.MessageToDict(struct)
    assert json_format.MessageToDict(convert.dict_to_struct(converted)) == sent
    json.dumps(converted, allow_nan=False)  # jsonb can hold it


@quick
@given(objects, st.integers(16, 4096))
def test_metadata_over_its_byte_limit_is_refused(value: dict[str, Any], limit: int) -> None:
    struct = build_struct(value)
    try:
        converted = convert.struct_value(struct, "metadata", max_bytes=limit)
    except InvalidArgument:
        return
    encoded = json.dumps(converted, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(encoded) <= limit


def test_nesting_to_the_limit_passes_and_beyond_is_refused() -> None:
    assert convert.struct_value(build_struct(nested(convert.MAX_DEPTH)), "filter")
    with pytest.raises(InvalidArgument, match="nested deeper"):
        convert.struct_value(build_struct(nested(convert.MAX_DEPTH + 1)), "filter")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"n": float("nan")}, "not a number JSON can hold"),
        ({"n": float("inf")}, "not a number JSON can hold"),
        ({"s": "a\x00b"}, "NUL"),
        ({"k\x00": 1}, "NUL"),
        ({"l": [1, {"deep": "\x00"}]}, "metadata.l\\[1\\].deep"),
    ],
)
def test_each_refusal_names_the_path_and_why(value: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        convert.struct_value(build_struct(value), "metadata")


@quick
@given(st.text(max_size=1200))
def test_keys_are_accepted_or_invalid(key: str) -> None:
    try:
        convert.check_key(key, "items[0].key")
    except InvalidArgument as refused:
        why = refused.message
    else:
        why = ""
    if why:
        assert why.startswith("items[0].key")
        assert (
            not key
            or "\x00" in key
            or len(key) > convert.MAX_KEY_CHARS
            or len(key.encode("utf-8", "surrogatepass")) > convert.MAX_KEY_BYTES
        )
        return
    assert 0 < len(key.encode("utf-8", "surrogatepass")) <= convert.MAX_KEY_BYTES


def test_a_key_under_the_character_limit_but_over_the_byte_limit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="bytes of UTF-8"):
        convert.check_key("\N{GRINNING FACE}" * 1024, "key")


@quick
@given(st.text(max_size=80))
def test_collection_names_are_accepted_or_invalid(name: str) -> None:
    try:
        assert convert.check_collection_name(name) == name
    except InvalidArgument:
        assert "\x00" in name or not convert.COLLECTION_NAME.match(name)
        return
    assert "\x00" not in name


def search(**fields: Any) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(**({"collection": "photos", "key": "cat"} | fields))


@quick
@given(st.integers(0, 2**31 - 1), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_a_token_comes_back_for_its_own_search(offset: int, mode: int, version: int) -> None:
    binding = convert.query_binding(search(top_k=10))
    token = convert.encode_page_token(offset, mode, version, key=KEY, binding=binding)
    # The next page may ask for another page size: top_k is not bound.
    again = convert.query_binding(search(top_k=50, page_token=token))
    assert convert.decode_page_token(token, key=KEY, binding=again) == (offset, mode, version)


@pytest.mark.parametrize(
    "other",
    [search(collection="other"), search(key="dog"), search(max_distance=0.5), search(probes=4)],
)
def test_a_token_from_another_search_is_invalid(other: search_pb2.SearchRequest) -> None:
    token = convert.encode_page_token(10, 1, 2, key=KEY, binding=convert.query_binding(search()))
    with pytest.raises(InvalidArgument, match="page_token"):
        convert.decode_page_token(token, key=KEY, binding=convert.query_binding(other))


def test_a_token_signed_with_another_key_is_invalid() -> None:
    binding = convert.query_binding(search())
    token = convert.encode_page_token(10, 1, 2, key=b"elsewhere", binding=binding)
    with pytest.raises(InvalidArgument):
        convert.decode_page_token(token, key=KEY, binding=binding)


def forged(payload: bytes) -> str:
    """A token that carries ``payload`` with a valid signature (as if the key leaked)."""
    tag = convert._tag(KEY, payload, b"")  # a private helper: building hostile input
    return f"{convert._b64(payload)}.{convert._b64(tag)}"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"o":1e400,"m":0,"v":0}',
        b'{"o":0,"m":0,"v":2147483648}',
        b'{"o":-1,"m":0,"v":0}',
        b'{"o":true,"m":0,"v":0}',
        b'{"o":1.5,"m":0,"v":0}',
        b"[" * 100_000 + b"]" * 100_000,
        b"not json",
        b"{}",
    ],
)
def test_a_signed_token_with_hostile_fields_is_invalid(payload: bytes) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        convert.decode_page_token(forged(payload), key=KEY)


@quick
@given(st.text(max_size=600) | st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()))
def test_any_token_text_is_accepted_or_invalid(token: str) -> None:
    try:
        convert.decode_page_token(token, key=KEY)
    except InvalidArgument:
        return
    raise AssertionError(f"an arbitrary token {token!r} was accepted")


@quick
@given(st.lists(st.floats(width=32), min_size=0, max_size=8), st.integers(1, 8))
def test_vectors_are_accepted_or_invalid(values: list[float], dimension: int) -> None:
    try:
        result = convert.vector(values, dimension, "vector")
    except InvalidArgument:
        return
    assert result.shape == (dimension,)
    assert all(math.isfinite(v) for v in result)
