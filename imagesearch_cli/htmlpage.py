"""A search's results as one self-contained HTML page: the query beside its hits."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from imagesearch_cli.gallery import Shown, data_uri, thumbnail

THUMB = 240

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
main { display: flex; gap: 2em; align-items: flex-start; }
aside { position: sticky; top: 1em; padding-right: 2em; border-right: 2px solid #ddd; }
.hits { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 240px; }
figure img, .missing { width: 240px; height: 240px; object-fit: contain; background: #f4f4f4; }
.missing { display: flex; align-items: center; justify-content: center; color: #888; }
figcaption { margin-top: .3em; overflow-wrap: anywhere; }
figcaption b { font-weight: 600; }
small { color: #666; }
"""


def _figure(shown: Shown) -> str:
    image = thumbnail(shown.path, THUMB)
    if image is None:
        picture = '<div class="missing">file not found</div>'
    else:
        picture = f'<img src="{data_uri(image)}" alt="{escape(shown.title)}">'
    lines = "".join(f"<br><small>{escape(line)}</small>" for line in shown.lines)
    return f"<figure>{picture}<figcaption><b>{escape(shown.title)}</b>{lines}</figcaption></figure>"


def write_html(out: Path, query: Shown, hits: Sequence[Shown], *, heading: str) -> None:
    figures = "\n".join(_figure(hit) for hit in hits) or "<p>No hits.</p>"
    page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{escape(heading)}</title><style>{_STYLE}</style></head>
<body>
<h1>{escape(heading)}</h1>
<main>
<aside><h2>Query</h2>{_figure(query)}</aside>
<section><h2>Nearest in meaning</h2><div class="hits">
{figures}
</div></section>
</main>
</body>
</html>
"""
    out.write_text(page, encoding="utf-8")
