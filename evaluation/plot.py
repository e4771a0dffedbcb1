"""A line chart drawn with Pillow: mAP against PCA dimensions, floors as horizontal lines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from evaluation.retrieval import PCA_DIMS, Retrieval

Colour = tuple[int, int, int]
PALETTE: tuple[Colour, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
)
GREY: Colour = (120, 120, 120)
INK: Colour = (30, 30, 30)
# The offline variants drawn as lines: the cube's own vectors (L2 > PCA), and each rescaling
# of them (the variants without the first L2 land within 0.01 of these).
PLOTTED = ("L2 > PCA", "L2 > PCA > L2", "L2 > PCA+whiten", "L2 > PCA+whiten > L2")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]  # one per x position
    colour: Colour


@dataclass(frozen=True)
class Level:
    """A horizontal reference line."""

    name: str
    value: float
    colour: Colour


def map_vs_dims(results: Sequence[Retrieval], out: Path) -> None:
    """mAP of the offline PCA variants at each dimension count, with the full-vector figure
    (API and numpy) and the floors as horizontal lines."""
    series: list[Series] = []
    levels: list[Level] = []
    prefix = len(results) > 1
    for index, result in enumerate(results):
        tag = f"{result.model}: " if prefix else ""
        cells = {(v.name, v.dims): e.overall.map for v, e in result.variants}
        for offset, name in enumerate(PLOTTED):
            colour = PALETTE[(index * len(PLOTTED) + offset) % len(PALETTE)]
            values = [cells[(name, d)] for d in PCA_DIMS]
            series.append(Series(f"{tag}{name}", values, colour))
        levels.append(
            Level(
                f"{tag}full {result.dimension}-D, API EXACT = numpy",
                result.api.evaluation.overall.map,
                INK,
            )
        )
    first = results[0]
    for line in first.floors:
        levels.append(Level(line.name, line.evaluation.overall.map, GREY))
    title = f"Fashion-MNIST, {first.images} images, leave-one-out: mAP against PCA dimensions"
    draw_chart(out, title, PCA_DIMS, series, levels, "mAP", "PCA dimensions (log scale)")


def draw_chart(
    out: Path,
    title: str,
    xs: Sequence[int],
    series: Sequence[Series],
    levels: Sequence[Level],
    y_label: str,
    x_label: str,
) -> None:
    width, height = 1000, 620
    left, right, top, bottom = 70, 330, 50, 60
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    face, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    values = [v for s in series for v in s.values] + [level.value for level in levels]
    y_max = math.ceil(max(values) * 10 + 0.5) / 10
    plot_w, plot_h = width - left - right, height - top - bottom
    log_lo, log_hi = math.log2(xs[0]), math.log2(xs[-1])

    def px(x: float) -> float:
        return left + 20 + (math.log2(x) - log_lo) / (log_hi - log_lo) * (plot_w - 40)

    def py(y: float) -> float:
        return top + plot_h - y / y_max * plot_h

    draw.text((left, 14), title, fill=INK, font=face)
    for step in range(round(y_max * 10) + 1):
        y = step / 10
        draw.line((left, py(y), left + plot_w, py(y)), fill=(230, 230, 230))
        draw.text((left - 8, py(y)), f"{y:.1f}", fill=INK, font=small, anchor="rm")
    for x in xs:
        draw.line((px(x), top + plot_h, px(x), top + plot_h + 5), fill=INK)
        draw.text((px(x), top + plot_h + 8), str(x), fill=INK, font=small, anchor="mt")
    draw.rectangle((left, top, left + plot_w, top + plot_h), outline=INK)
    draw.text((left + plot_w / 2, height - 22), x_label, fill=INK, font=small, anchor="mm")
    draw.text((14, top + plot_h / 2), y_label, fill=INK, font=small, anchor="lm")
    for level in levels:
        level_y = py(level.value)
        for start in range(left, left + plot_w, 12):  # dashed
            end = min(start + 6, left + plot_w)
            draw.line((start, level_y, end, level_y), fill=level.colour, width=2)
    for s in series:
        points = [(px(x), py(v)) for x, v in zip(xs, s.values, strict=True)]
        draw.line(points, fill=s.colour, width=3)
        for cx, cy in points:
            draw.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=s.colour)
    legend_x, legend_y = left + plot_w + 20, top
    for s in series:
        draw.line((legend_x, legend_y + 8, legend_x + 24, legend_y + 8), fill=s.colour, width=3)
        draw.text((legend_x + 30, legend_y), s.name, fill=INK, font=small)
        legend_y += 22
    legend_y += 10
    for level in levels:
        for start in range(legend_x, legend_x + 24, 12):
            draw.line((start, legend_y + 8, start + 6, legend_y + 8), fill=level.colour, width=2)
        label = f"{level.name} ({level.value:.3f})"
        draw.text((legend_x + 30, legend_y), label, fill=INK, font=small)
        legend_y += 22
    canvas.save(out, "PNG")
