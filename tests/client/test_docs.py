"""README's Python client example, run as written against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path

from PIL import Image

from devenv.photos import encode

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    section = README.read_text().split("## Python client", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "README's client section has no python block"
    return found.group(1)


async def test_the_readme_client_example_runs(with_images: str, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    for name, colour in (("red.jpg", (220, 20, 20)), ("blue.jpg", (20, 20, 220))):
        (tmp_path / "photos" / name).write_bytes(encode(Image.new("RGB", (80, 60), colour)))
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (tmp_path / "query.jpg").write_bytes(encode(Image.new("RGB", (80, 60), (200, 30, 30))))
    code = _example()
    # The example's address and relative paths, pointed at this test's server and files.
    for old, new in (
        ('"127.0.0.1:50052"', repr(with_images)),
        ('Path("photos")', f"Path({str(tmp_path / 'photos')!r})"),
        ('Path("query.jpg")', f"Path({str(tmp_path / 'query.jpg')!r})"),
    ):
        assert old in code
        code = code.replace(old, new)

    def run() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
        return out.getvalue()

    lines = (await asyncio.to_thread(run)).splitlines()
    assert lines[0].startswith("broken.jpg CORRUPT_IMAGE ")
    assert [line.split()[:2] for line in lines[1:]] == [["1", "red.jpg"], ["2", "blue.jpg"]]
