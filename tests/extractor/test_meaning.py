"""With real ImageNet weights, embeddings rank real photos by what they show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extractor_service.preprocess import preprocess
from extractor_service.runtime import OnnxModel
from tests import photos


@pytest.fixture(scope="module")
def embed(lite0_model_dir: Path):
    model = OnnxModel.load(lite0_model_dir)
    manifest = model.manifest
    config = manifest.preprocess_config()

    def embed(data: bytes) -> np.ndarray:
        vector = model.run(preprocess(data, config, item="photo")[None])[0]
        normalised: np.ndarray = vector / np.linalg.norm(vector)
        return normalised

    return embed


@pytest.fixture(scope="module")
def gallery(embed) -> dict[str, np.ndarray]:
    return {name: embed(photos.photo_bytes(name)) for name in photos.available_photos()}


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


TRIPLETS = [  # (anchor, shows something alike, shows something else)
    ("moon", "hubble_deep_field", "chelsea"),  # the night sky vs a cat
    ("hubble_deep_field", "moon", "motorcycle"),
    ("grass", "gravel", "astronaut"),  # ground textures vs a person
    ("gravel", "grass", "coffee"),
]
DARKNET_TRIPLETS = [
    ("horses", "giraffe", "coffee"),  # animals in a landscape vs a cup
    ("giraffe", "horses", "rocket"),
    ("horses", "person", "brick"),  # person shows a white horse
    ("dog", "person", "hubble_deep_field"),  # person shows a dog
]


@pytest.mark.parametrize(("anchor", "alike", "other"), TRIPLETS)
def test_alike_photos_are_nearer_than_unlike_ones(gallery, anchor, alike, other) -> None:
    assert distance(gallery[anchor], gallery[alike]) < distance(gallery[anchor], gallery[other])


@photos.requires_darknet
@pytest.mark.parametrize(("anchor", "alike", "other"), DARKNET_TRIPLETS)
def test_alike_darknet_photos_are_nearer_than_unlike_ones(gallery, anchor, alike, other) -> None:
    assert distance(gallery[anchor], gallery[alike]) < distance(gallery[anchor], gallery[other])


@photos.requires_darknet
def test_horses_nearest_neighbours_show_animals(gallery) -> None:
    others = sorted(
        (distance(gallery["horses"], v), n) for n, v in gallery.items() if n != "horses"
    )
    assert {name for _, name in others[:2]} == {"person", "giraffe"}


@pytest.mark.parametrize("name", photos.available_photos())
def test_flipped_cropped_recompressed_copy_is_nearest_its_original(gallery, embed, name) -> None:
    image = photos.photo(name).convert("RGB")
    copy = photos.encode(photos.center_crop(photos.flipped(image), 0.85), "JPEG", quality=60)
    query = embed(copy)
    nearest = min(gallery, key=lambda other: distance(query, gallery[other]))
    assert nearest == name
