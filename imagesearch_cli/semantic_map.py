"""``imagesearch map``: the stored embeddings projected to 2-D, drawn as thumbnails."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imagesearch_cli import layout
from imagesearch_cli.client import CALL_TIMEOUT_S, Client, CliError
from imagesearch_cli.gallery import BACKGROUND, INK, clipped, fitted, font, resolve

_LABELS_UP_TO = 60  # beyond this many pictures, key labels only add clutter
_LABEL = 14  # pixels under a thumbnail for its label
_TOP = 40  # pixels above the map for its heading


def run(
    client: Client, keys: Sequence[str], *, root: Path, out: Path, size: int, thumb: int
) -> int:
    # Fails, as one line, when the collection itself does not exist.
    client.api.collection_stats(timeout=CALL_TIMEOUT_S)
    stored = client.api.get_images(keys, include_embedding=True, timeout=CALL_TIMEOUT_S)
    if not stored:
        raise CliError(
            f"none of the {len(keys)} images is in collection {client.collection_name!r}; "
            "run `imagesearch index` on the folder first"
        )
    shown = [key for key in keys if key in stored]
    vectors = np.asarray([stored[key].embedding.values for key in shown], dtype=np.float64)
    points, explained = layout.pca_2d(vectors)
    model = stored[shown[0]].model
    heading = (
        f"{client.collection_name}: {len(shown)} images, {model.name} {model.dimension}-D "
        f"embeddings, PCA to 2-D (PC1 {explained[0]:.0%}, PC2 {explained[1]:.0%} of the "
        "variance); overlapping pictures nudged apart"
    )
    _draw(out, points, [(key, resolve(root, key)) for key in shown], heading, size, thumb)
    missing = len(keys) - len(shown)
    print(f"wrote {out}: {len(shown)} images" + (f", {missing} not indexed" if missing else ""))
    return 0


def _draw(
    out: Path,
    points: layout.Floats,
    pictures: Sequence[tuple[str, Path | None]],
    heading: str,
    size: int,
    thumb: int,
) -> None:
    width, height = size, size * 3 // 4
    labels = len(pictures) <= _LABELS_UP_TO
    label = _LABEL if labels else 0
    # Centres stay far enough from the edges for a whole thumbnail and its label.
    low = np.array([thumb / 2 + 8, _TOP + thumb / 2 + 4])
    high = np.array([width - thumb / 2 - 8, height - thumb / 2 - label - 8])
    centres = layout.fit(points, low, high)
    centres = layout.spread(centres, (thumb + 6, thumb + label + 6), low, high)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((12, 10), clipped(draw, heading, font(16), width - 24), fill=INK, font=font(16))
    face = font(11)
    for (key, path), (x, y) in zip(pictures, centres, strict=True):
        picture = fitted(path, thumb)
        left, upper = round(x) - picture.width // 2, round(y) - picture.height // 2
        draw.rectangle(
            (left - 2, upper - 2, left + picture.width + 1, upper + picture.height + 1),
            outline=(150, 150, 150),
        )
        canvas.paste(picture, (left, upper))
        if labels:
            name = clipped(draw, key, face, thumb + 20)
            draw.text((left, upper + picture.height + 3), name, fill=INK, font=face)
    canvas.save(out, "PNG")
