"""Fashion-MNIST from Debian's dataset-fashion-mnist package: IDX files read with numpy."""

from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

# Where `apt-get install dataset-fashion-mnist` puts the four gzipped IDX files.
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# IDX magic numbers: 0x08 = unsigned bytes, then the number of dimensions.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


@dataclass(frozen=True)
class Sample:
    """Images (n, 28, 28) uint8 with their class names and keys, in file order."""

    images: npt.NDArray[np.uint8]
    labels: tuple[str, ...]
    keys: tuple[str, ...]

    def png(self, index: int) -> bytes:
        """One image as a greyscale PNG file, what the API is sent."""
        buffer = io.BytesIO()
        Image.fromarray(self.images[index]).save(buffer, "PNG")
        return buffer.getvalue()


def available(data_dir: Path = DATA_DIR) -> bool:
    return (data_dir / "t10k-images-idx3-ubyte.gz").is_file()


def load(
    *, per_class: int | None, classes: int = len(CLASSES), data_dir: Path = DATA_DIR
) -> Sample:
    """The test split's first ``per_class`` images of each of the first ``classes`` classes.

    ``per_class=None`` takes the whole split. Taking the first ones in file order (not a
    random draw) makes the subset the same on every machine without a seed to agree on.
    """
    if not available(data_dir):
        raise FileNotFoundError(f"Fashion-MNIST is not in {data_dir}; {INSTALL_HINT}")
    images = read_idx(data_dir / "t10k-images-idx3-ubyte.gz", _IMAGES_MAGIC)
    labels = read_idx(data_dir / "t10k-labels-idx1-ubyte.gz", _LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels in {data_dir}")
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(classes)]
    index = np.sort(np.concatenate(chosen))
    return Sample(
        images=images[index],
        labels=tuple(CLASSES[int(labels[i])] for i in index),
        # Zero-padded file positions: key order is file order, for ties in rankings.
        keys=tuple(f"fashion-mnist/t10k-{int(i):05d}.png" for i in index),
    )


def read_idx(path: Path, magic: int) -> npt.NDArray[np.uint8]:
    """An IDX file of unsigned bytes: big-endian magic, one uint32 size per dimension, data."""
    data = gzip.decompress(path.read_bytes())
    (found,) = struct.unpack_from(">I", data)
    if found != magic:
        raise ValueError(f"{path}: IDX magic {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(data) != offset + count:
        raise ValueError(f"{path}: {len(data) - offset} data bytes, header implies {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
