"""The decoder path under hostile files: forged headers, and a mutation fuzzer over real photos."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from extractor_service.preprocess import PixelBudget, PreprocessConfig, preprocess
from service_core.errors import InvalidArgument, ResourceExhausted
from tests.photos import available_photos, encode, photo

CONFIG = PreprocessConfig(
    input_size=224, resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


def with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its start-of-frame header rewritten to claim width x height."""
    data, at = bytearray(jpeg), 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        at += 2 + length
    raise AssertionError("no start-of-frame marker")


def picture(size: tuple[int, int] = (768, 576)) -> Image.Image:
    return photo("coffee").convert("RGB").resize(size)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_header_claiming_more_than_the_data_holds_is_truncated(progressive: bool) -> None:
    buffer = io.BytesIO()
    picture().save(buffer, "JPEG", quality=90, progressive=progressive)
    forged = with_frame_size(buffer.getvalue(), 6000, 6000)
    with pytest.raises(InvalidArgument, match=r"cannot hold the 6000x6000 picture.*truncated"):
        preprocess(forged, CONFIG, item="forged")


def test_the_same_file_with_its_true_header_decodes() -> None:
    data = encode(picture(), "JPEG", quality=90)
    assert preprocess(data, CONFIG, item="honest").shape == (3, 224, 224)


def test_a_cut_file_is_truncated() -> None:
    data = encode(picture(), "JPEG", quality=90)
    with pytest.raises(InvalidArgument, match="truncated or corrupt JPEG"):
        preprocess(data[: len(data) // 2], CONFIG, item="cut")


FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]


def seeds() -> list[tuple[str, bytes]]:
    """Small real photos in every accepted format (small so that each decode is quick)."""
    found = []
    for index, fmt in enumerate(FORMATS):
        name = available_photos()[index % len(available_photos())]
        image = photo(name).convert("RGB").resize((96, 72))
        found.append((fmt, encode(image, fmt)))
    return found


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of the mutations a fuzzer uses: flips, overwrites, cuts, splices, repeats."""
    buffer = bytearray(data)
    kind = int(rng.integers(6))
    at = int(rng.integers(len(buffer)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            buffer[int(rng.integers(len(buffer)))] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # header fields: sizes, counts and lengths live in the first bytes
        head = int(rng.integers(min(64, len(buffer))))
        buffer[head] = int(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF]))
    elif kind == 2:
        del buffer[at:]
    elif kind == 3:
        buffer[at:at] = rng.bytes(int(rng.integers(1, 64)))
    elif kind == 4:
        end = min(len(buffer), at + int(rng.integers(1, 256)))
        buffer[at:at] = buffer[at:end] * int(rng.integers(2, 8))
    else:
        del buffer[at : at + int(rng.integers(1, 64))]
    return bytes(buffer)


def test_mutated_real_files_decode_or_are_refused_never_crash() -> None:
    """2,400 mutants (400 per format, a fixed seed): a tensor, or a client error naming the item.

    A ValueError, OSError or anything else escaping preprocess() would reach the
    caller as INTERNAL; this is what pins that none does.
    """
    rng = np.random.default_rng(20260)
    outcomes = {"decoded": 0, "refused": 0}
    for fmt, data in seeds():
        assert preprocess(data, CONFIG, item=fmt).shape == (3, 224, 224)
        for index in range(400):
            mutant = mutate(data, rng)
            item = f"{fmt}-{index}"
            try:
                tensor = preprocess(mutant, CONFIG, item=item)
            except (InvalidArgument, ResourceExhausted) as refused:
                why = refused.message
            else:
                why = ""
            if why:
                assert item in why
                outcomes["refused"] += 1
                continue
            assert tensor.shape == (3, 224, 224)
            assert np.isfinite(tensor).all()
            outcomes["decoded"] += 1
    # Both paths are exercised: not every mutant breaks the file, nor does every one pass.
    assert outcomes["decoded"] > 50
    assert outcomes["refused"] > 50


def test_a_request_decodes_at_most_its_pixel_budget() -> None:
    png = encode(picture((1000, 1000)), "PNG")
    budget = PixelBudget(2_500_000)
    assert preprocess(png, CONFIG, item="a", budget=budget).shape == (3, 224, 224)
    assert preprocess(png, CONFIG, item="b", budget=budget).shape == (3, 224, 224)
    with pytest.raises(ResourceExhausted, match=r"'c'.*1000x1000.*2500000"):
        preprocess(png, CONFIG, item="c", budget=budget)


def test_a_jpeg_counts_at_its_reduced_decode_size() -> None:
    # 4000x3000 decodes at 1/8 (500x375): a budget of 1 MP takes several.
    jpeg = encode(picture((4000, 3000)), "JPEG")
    budget = PixelBudget(1_000_000)
    for item in ("a", "b", "c"):
        preprocess(jpeg, CONFIG, item=item, budget=budget)
    assert budget.left == 1_000_000 - 3 * 500 * 375
