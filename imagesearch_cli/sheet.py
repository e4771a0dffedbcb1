"""A search's results as a PNG contact sheet: the query on the left, hits in a grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from imagesearch_cli.gallery import BACKGROUND, INK, Shown, clipped, fitted, font

THUMB = 180
PAD = 14
COLUMNS = 5
LINE = 16
HEADING = 30


def _tile(canvas: Image.Image, shown: Shown, left: int, top: int) -> None:
    picture = fitted(shown.path, THUMB)
    # Centred in its square, so portrait and landscape results line up.
    offset = ((THUMB - picture.width) // 2, (THUMB - picture.height) // 2)
    canvas.paste(picture, (left + offset[0], top + offset[1]))
    draw = ImageDraw.Draw(canvas)
    face = font(LINE - 3)
    for index, text in enumerate((shown.title, *shown.lines)):
        draw.text(
            (left, top + THUMB + 4 + index * LINE),
            clipped(draw, text, face, THUMB),
            fill=INK,
            font=face,
        )


def write_sheet(out: Path, query: Shown, hits: Sequence[Shown], *, heading: str) -> None:
    columns = max(1, min(COLUMNS, len(hits)))
    rows = max(1, math.ceil(len(hits) / columns))
    tile_height = THUMB + 4 + LINE * (1 + max((len(s.lines) for s in (query, *hits)), default=0))
    grid_left = PAD + THUMB + 3 * PAD  # the query column, then a rule
    width = grid_left + columns * (THUMB + PAD)
    height = HEADING + PAD + rows * (tile_height + PAD)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD // 2), clipped(draw, heading, font(18), width - 2 * PAD), INK, font(18))
    top = HEADING + PAD
    _tile(canvas, query, PAD, top)
    rule = PAD + THUMB + PAD + PAD // 2
    draw.line([(rule, top), (rule, height - PAD)], fill=(200, 200, 200), width=2)
    for index, hit in enumerate(hits):
        row, column = divmod(index, columns)
        _tile(canvas, hit, grid_left + column * (THUMB + PAD), top + row * (tile_height + PAD))
    canvas.save(out, "PNG")
