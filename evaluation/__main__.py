"""``python -m evaluation`` (make eval): retrieval quality through the API beside numpy's."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

# gRPC logs a line whenever a subprocess forks beside its threads (pg_ctl, the services).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from evaluation import copies, fashion, plot, report, retrieval
from evaluation.api import MAX_MESSAGE_BYTES, Api, channel
from evaluation.services import LocalStack, export_lite0
from imagesearch.client import AsyncSearchClient, Connection, Tls
from imagesearch.extractor.v1 import extractor_pb2_grpc
from service_core.tls import channel_credentials

log = logging.getLogger("evaluation")
DEFAULT_OUT = Path(".data/eval")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
    parser.add_argument(
        "--search",
        metavar="HOST:PORT",
        help="a running search service (with --extractor, the extractor it uses); its "
        "collections named eval-* are replaced. Default: start PostgreSQL and both services",
    )
    parser.add_argument("--extractor", metavar="HOST:PORT", help="the extractor --search uses")
    # With --search: how to reach and authenticate to services that require TLS or a token.
    parser.add_argument("--ca-file", type=Path, help="PEM CA bundle the services are verified by")
    parser.add_argument("--cert-file", type=Path, help="client certificate for mTLS")
    parser.add_argument("--key-file", type=Path, help="private key of --cert-file")
    parser.add_argument("--server-name", default="", help="name the certificates must carry")
    parser.add_argument(
        "--token-file", type=Path, help="file holding a bearer token (a writer's, or admin)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        action="append",
        default=[],
        help="exported model to evaluate (repeatable, e.g. a VGG16 export with real weights); "
        "default: EfficientNet-Lite0, exported under --out",
    )
    parser.add_argument("--per-class", type=int, default=100, help="test images per class")
    parser.add_argument("--full", action="store_true", help="the whole 10,000-image test set")
    parser.add_argument(
        "--depth", type=int, default=1000, help="hits ranked per query (the API's max top_k)"
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=0,
        help="images searched for, balanced over classes (0: every image); all are stored",
    )
    parser.add_argument(
        "--sweep-queries",
        type=int,
        default=500,
        help="queries per EXACT/FAST sweep setting, balanced over classes (0: every image)",
    )
    parser.add_argument("--no-fast", action="store_true", help="skip the EXACT/FAST sweep")
    parser.add_argument("--no-copies", action="store_true", help="skip copy detection")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report, JSON, logs")
    parser.add_argument(
        "--plot", type=Path, help="where to draw mAP against dimensions (default: in --out)"
    )
    return parser


async def _evaluate(
    api: Api, args: argparse.Namespace, sample: fashion.Sample | None
) -> tuple[retrieval.Retrieval | None, copies.Copies | None, str]:
    info = await api.model()
    model = f"{info.ref.name} {info.ref.dimension}-D ({info.layer}, {info.precision})"
    log.info("evaluating %s", model)
    found = None
    if sample is not None:
        found = await retrieval.evaluate(
            api,
            sample,
            collection=f"eval-fashion-{info.ref.name}",
            model=model,
            depth=args.depth,
            fast_sweep=() if args.no_fast else retrieval.FAST_SWEEP,
            queries=args.queries or None,
            sweep_queries=args.sweep_queries or None,
        )
    copied = None
    if not args.no_copies:
        copied = await copies.evaluate(api, collection=f"eval-copies-{info.ref.name}")
    return found, copied, model


async def _run(args: argparse.Namespace) -> int:
    out: Path = args.out
    sample = None
    if fashion.available():
        sample = fashion.load(per_class=None if args.full else args.per_class)
    else:
        log.warning("Fashion-MNIST missing (%s): copy detection only", fashion.INSTALL_HINT)
    outcomes: list[tuple[retrieval.Retrieval | None, copies.Copies | None, str]] = []
    started = time.monotonic()
    if args.search:
        token = args.token_file.read_text().strip() if args.token_file else None
        credentials = channel_credentials(
            ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file, token=token
        )
        tls = None
        if credentials is not None:
            tls = Tls(
                ca_file=args.ca_file,
                cert_file=args.cert_file,
                key_file=args.key_file,
                server_name=args.server_name,
            )
        connection = Connection(
            args.search, tls=tls, token=token, max_message_bytes=MAX_MESSAGE_BYTES
        )
        async with (
            AsyncSearchClient(connection) as search,
            channel(args.extractor, credentials, args.server_name) as extractor,
        ):
            api = Api(search, extractor_pb2_grpc.ExtractorServiceStub(extractor))
            outcomes.append(await _evaluate(api, args, sample))
    else:
        stack = LocalStack(out)
        try:
            stack.start_database()
            model_dirs = args.model_dir
            if not model_dirs:
                with (out / "export.log").open("ab") as export_log:
                    model_dirs = [export_lite0(out / "models" / "efficientnet-lite0", export_log)]
            for index, model_dir in enumerate(model_dirs):
                search_address, extractor_address = await stack.start_services(
                    model_dir, str(index)
                )
                connection = Connection(search_address, max_message_bytes=MAX_MESSAGE_BYTES)
                async with (
                    AsyncSearchClient(connection) as search,
                    channel(extractor_address) as extractor,
                ):
                    api = Api(search, extractor_pb2_grpc.ExtractorServiceStub(extractor))
                    outcomes.append(await _evaluate(api, args, sample))
                stack.stop_services()
        finally:
            stack.close()

    lines = [f"Run took {time.monotonic() - started:.0f} s.", ""]
    for found, copied, model in outcomes:
        if found is not None:
            lines += report.retrieval(found, "Fashion-MNIST")
        if copied is not None:
            lines += report.copies(copied, model)
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            [
                {"model": model, "retrieval": _plain(found), "copies": _plain(copied)}
                for found, copied, model in outcomes
            ],
            indent=1,
        )
    )
    retrievals = [found for found, _, _ in outcomes if found is not None]
    if retrievals:
        plot.map_vs_dims(retrievals, args.plot or out / "quality-map-vs-dims.png")
    print(text)
    gaps = [r.model for r in retrievals if report.gap(r) > report.TOLERANCE]
    if gaps:
        print(f"error: the API ranks worse than numpy on the same vectors for {gaps}")
        return 1
    return 0


def _plain(value: object) -> object:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else None  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if bool(args.search) != bool(args.extractor):
        _parser().error("--search and --extractor go together")
    if args.search and args.model_dir:
        _parser().error("--model-dir starts services of its own; not with --search")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sys.exit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
