"""The results as Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence

from evaluation.copies import Copies
from evaluation.metrics import Evaluation
from evaluation.retrieval import PCA_DIMS, Line, Retrieval

# API and numpy figures on the same vectors may differ by float rounding in exactly tied
# distances only; anything larger is a loss in the pipeline.
TOLERANCE = 1e-6


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _scores_row(line: Line, dims: int | None) -> list[str]:
    s = line.evaluation.overall
    return [
        line.name,
        str(dims or line.dims or ""),
        _f(s.map),
        _f(s.p1),
        _f(s.p10),
        _f(s.r10),
        _f(line.p50_ms, 1),
        _f(line.p95_ms, 1),
    ]


def gap(result: Retrieval) -> float:
    """Largest difference between the API's and numpy's overall figures (API below numpy)."""
    api, offline = result.api.evaluation.overall, result.numpy.evaluation.overall
    return max(
        offline.map - api.map, offline.p1 - api.p1, offline.p10 - api.p10, offline.r10 - api.r10
    )


def retrieval(result: Retrieval, dataset: str) -> list[str]:
    out = [
        f"### {dataset}: {result.model}",
        "",
        f"{result.images} images stored, {result.classes} classes; "
        f"{result.api.evaluation.overall.queries} of them searched for by key, each left out "
        f"of its own ranking; rankings {result.depth} deep. Ingest through IngestStream: "
        f"{result.ingest_s:.1f} s ({result.images / result.ingest_s:.1f} images/s).",
        "",
    ]
    header = ["method", "dims", "mAP", "P@1", "P@10", "R@10", "p50 ms", "p95 ms"]
    rows = [_scores_row(result.api, result.dimension), _scores_row(result.numpy, result.dimension)]
    rows += [_scores_row(line, None) for line in result.floors]
    out += _table(header, rows)
    verdict = "no gap" if gap(result) <= TOLERANCE else f"GAP of {gap(result):.4f}"
    checked = (
        "not checked (no extractor address)"
        if result.stored_vs_direct is None
        else f"{result.stored_vs_direct:.2e}"
    )
    out += [
        f"API vs numpy: {verdict}; {result.differing_rankings} of "
        f"{result.api.evaluation.overall.queries} rankings "
        f"differ anywhere in their {result.depth} hits. Largest |stored vector - extractor's "
        f"vector| for the same bytes: {checked}.",
        "",
        "Per class (API, EXACT; numpy's mAP beside it):",
        "",
    ]
    rows = []
    for label, s in result.api.evaluation.by_class.items():
        offline = result.numpy.evaluation.by_class[label]
        rows.append([label, _f(s.map), _f(offline.map), _f(s.p1), _f(s.p10), _f(s.r10)])
    out += _table(["class", "mAP", "mAP numpy", "P@1", "P@10", "R@10"], rows)
    out += _variants(result)
    out += _fast(result)
    return out


def _variants(result: Retrieval) -> list[str]:
    out = [
        "PCA sweep, offline in numpy on the same stored vectors (PCA fitted on the whole set, "
        "as RefitProjection fits on the collection). `L2 > PCA` is what the service's cube "
        "holds; mAP, then P@10:",
        "",
    ]
    full = {v.name: e for v, e in result.variants if v.dims is None}
    names = list(dict.fromkeys(v.name for v, _ in result.variants if v.dims is not None))
    cells = {(v.name, v.dims): e for v, e in result.variants}
    for metric in ("map", "p10"):
        header = ["vectors", *[f"{d}-D" for d in PCA_DIMS], f"full {result.dimension}-D"]
        rows = []
        for name in names:
            values = [_metric(cells[(name, d)], metric) for d in PCA_DIMS]
            rows.append([name, *values, ""])
        rows += [[name, *[""] * len(PCA_DIMS), _metric(e, metric)] for name, e in full.items()]
        out += _table(header, rows)
    return out


def _metric(evaluation: Evaluation, metric: str) -> str:
    return _f(getattr(evaluation.overall, metric))


def _fast(result: Retrieval) -> list[str]:
    if result.exact_top is None:
        return []
    s = result.exact_top.evaluation.overall
    out = [
        f"EXACT vs FAST through the API, top 100 per query ({s.queries} queries each; mAP@100 "
        "counts relevant images past 100 as missed). 0 = the service's default (lists "
        "4·√n; probes and candidates from its settings). Recall = share of EXACT's top k "
        "that FAST returns:",
        "",
    ]
    header = [
        "mode",
        "dims",
        "lists",
        "probes",
        "candidates",
        "mAP@100",
        "P@1",
        "P@10",
        "recall@10",
        "recall@100",
        "p50 ms",
        "p95 ms",
    ]
    exact = result.exact_top
    rows = [
        [
            "EXACT",
            str(result.dimension),
            "",
            "",
            "",
            _f(s.map),
            _f(s.p1),
            _f(s.p10),
            "1",
            "1",
            _f(exact.p50_ms, 1),
            _f(exact.p95_ms, 1),
        ]
    ]
    for line in result.fast:
        f, setting = line.evaluation.overall, line.setting
        rows.append(
            [
                "FAST",
                str(setting.dims),
                str(line.lists) + ("" if setting.lists else " (default)"),
                str(setting.probes or "default"),
                str(setting.candidates or "default"),
                _f(f.map),
                _f(f.p1),
                _f(f.p10),
                _f(line.recall10),
                _f(line.recall100),
                _f(line.p50_ms, 1),
                _f(line.p95_ms, 1),
            ]
        )
    return [*out, *_table(header, rows)]


def copies(result: Copies, model: str) -> list[str]:
    out = [
        f"### Copy detection: {model}",
        "",
        f"{result.originals} original photos stored; each edited copy (saved as JPEG) is the "
        "query, by its bytes, EXACT; the figure is the share whose original comes first. "
        f"Search-by-image latency (extraction included): p50 {result.p50_ms:.0f} ms, "
        f"p95 {result.p95_ms:.0f} ms. Floors: 16x16 grey pixels, and chance = "
        f"1/{result.originals} = {1 / result.originals:.2f}.",
        "",
    ]
    rows = [
        [
            line.transform,
            _f(line.api, 2),
            _f(line.numpy, 2),
            _f(line.pixels, 2),
            ", ".join(line.missed) or "",
        ]
        for line in result.lines
    ]
    header = ["edit", "API top-1", "numpy top-1", "pixels top-1", "missed (API)"]
    return [*out, *_table(header, rows)]
