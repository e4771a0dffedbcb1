"""Sample photos for tests (devenv.photos), and the mark for tests that need darknet's."""

from __future__ import annotations

import pytest

from devenv.photos import DARKNET_PHOTOS as DARKNET_PHOTOS
from devenv.photos import SKIMAGE_PHOTOS as SKIMAGE_PHOTOS
from devenv.photos import available_photos as available_photos
from devenv.photos import center_crop as center_crop
from devenv.photos import darknet_available
from devenv.photos import describe as describe
from devenv.photos import encode as encode
from devenv.photos import flipped as flipped
from devenv.photos import large_jpeg as large_jpeg
from devenv.photos import photo as photo
from devenv.photos import photo_bytes as photo_bytes
from devenv.photos import rescale as rescale

requires_darknet = pytest.mark.skipif(
    not darknet_available(), reason="needs Debian's darknet package for its sample photos"
)
