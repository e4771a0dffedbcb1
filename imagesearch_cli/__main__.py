"""Command line: ``imagesearch index|search|map|stats|delete|refit``."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagesearch.client import Connection, SearchError, Tls
from imagesearch_cli import admin, files, indexing, searching, semantic_map
from imagesearch_cli.client import CALL_TIMEOUT_S, DEFAULT_SERVER, Client, CliError

# Connection options: (flag, environment variable, help); each works before or after
# the subcommand, and the variable stands in when the flag is not given.
_SECURITY = (
    ("--tls", "IMAGESEARCH_TLS", "speak TLS, verifying the server by the system's CAs"),
    ("--ca-file", "IMAGESEARCH_CA_FILE", "PEM CA bundle to verify the server by (implies TLS)"),
    ("--cert-file", "IMAGESEARCH_CERT_FILE", "client certificate for mTLS (with --key-file)"),
    ("--key-file", "IMAGESEARCH_KEY_FILE", "private key of --cert-file"),
    ("--server-name", "IMAGESEARCH_SERVER_NAME", "name the server's certificate must carry"),
    ("--token-file", "IMAGESEARCH_TOKEN_FILE", "file holding a bearer token (implies TLS)"),
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    server_help = f"search service host:port (default: $IMAGESEARCH_SERVER or {DEFAULT_SERVER})"
    parser = argparse.ArgumentParser(
        prog="imagesearch", description="Index, search and map images over gRPC."
    )
    server = os.environ.get("IMAGESEARCH_SERVER", DEFAULT_SERVER)
    parser.add_argument("--server", default=server, metavar="HOST:PORT", help=server_help)
    parser.add_argument("--collection", default="", help="collection (default: 'default')")
    # pyproject.toml holds the version; the installed package's metadata carries it here.
    version = importlib.metadata.version("imagesearch")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    # The same options after the subcommand too; SUPPRESS keeps the ones given first.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server", default=argparse.SUPPRESS, metavar="HOST:PORT", help=server_help
    )
    common.add_argument("--collection", default=argparse.SUPPRESS, help="collection")
    for flag, env, text in _SECURITY:
        kind: dict[str, Any] = {"action": "store_true"} if flag == "--tls" else {}
        dest = flag[2:].replace("-", "_")
        parser.add_argument(flag, dest=dest, default=None, help=f"{text} (${env})", **kind)
        common.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=text, **kind)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", parents=[common], help="index a folder, recursively")
    index.add_argument("dir", type=Path)
    index.add_argument("--metadata-file", type=Path, help="JSON object: key -> metadata object")
    index.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="upload without asking "
        "what is stored first (the server still skips extraction for the same bytes)",
    )

    search = commands.add_parser("search", parents=[common], help="find similar images")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("image", nargs="?", type=Path, help="a query image file")
    query.add_argument("--key", help="the key of a stored image instead")
    search.add_argument("--top-k", type=_positive, default=10)
    search.add_argument("--mode", choices=sorted(searching.MODES), default="auto")
    search.add_argument(
        "--filter", dest="metadata_filter", metavar="JSON", help='e.g. {"album": "pets"}'
    )
    search.add_argument("--root", type=Path, default=Path(), help="the folder that was indexed")
    search.add_argument("--html", type=Path, help="write an HTML page of the results")
    search.add_argument("--png", type=Path, help="write a PNG contact sheet of the results")

    drawn = commands.add_parser("map", parents=[common], help="draw the 2-D semantic map")
    drawn.add_argument("dir", nargs="?", type=Path, help="folder of indexed images")
    drawn.add_argument("--root", type=Path, help="the folder that was indexed (default: DIR)")
    drawn.add_argument("--key", action="append", default=[], help="map this key (repeatable)")
    drawn.add_argument("--out", type=Path, required=True, help="PNG file to write")
    drawn.add_argument("--size", type=_positive, default=1600, help="canvas width in pixels")
    drawn.add_argument("--thumb", type=_positive, default=72, help="thumbnail size in pixels")

    stats = commands.add_parser("stats", parents=[common], help="a collection's statistics")
    stats.add_argument("--all", dest="every", action="store_true", help="every collection")
    delete = commands.add_parser("delete", parents=[common], help="delete images by key")
    delete.add_argument("keys", nargs="+", metavar="KEY")
    refit = commands.add_parser("refit", parents=[common], help="fit a new FAST projection")
    refit.add_argument("--dimensions", type=int, default=0, help="1-100; 0: server default")
    refit.add_argument("--lists", type=int, default=0, help="0: about sqrt(images)")
    return parser


def _map_keys(options: argparse.Namespace) -> tuple[list[str], Path]:
    root: Path = options.root or options.dir or Path()
    keys: list[str] = list(options.key)
    if options.dir is not None:
        if not options.dir.resolve().is_relative_to(root.resolve()):
            raise CliError(f"{options.dir} is not inside --root {root}")
        keys += [i.key for i in files.scan(options.dir.resolve(), root.resolve()).images]
    if not keys:
        raise CliError("nothing to map: give a folder of indexed images, or --key")
    return list(dict.fromkeys(keys)), root


def _dispatch(client: Client, options: argparse.Namespace) -> int:
    command: str = options.command
    if command == "index":
        return indexing.run(
            client, options.dir, metadata_file=options.metadata_file, check=options.check
        )
    if command == "search":
        return searching.run(
            client,
            image=options.image,
            key=options.key,
            top_k=options.top_k,
            mode=options.mode,
            metadata_filter=options.metadata_filter,
            root=options.root,
            html=options.html,
            png=options.png,
        )
    if command == "map":
        keys, root = _map_keys(options)
        return semantic_map.run(
            client, keys, root=root, out=options.out, size=options.size, thumb=options.thumb
        )
    if command == "stats":
        return admin.stats(client, every=options.every)
    if command == "delete":
        return admin.delete(client, options.keys)
    return admin.refit(client, dimensions=options.dimensions, lists=options.lists)


def _client(options: argparse.Namespace) -> Client:
    """The client the connection options (flags, else IMAGESEARCH_* variables) ask for."""
    given: dict[str, str | None] = {}
    for flag, env, _ in _SECURITY:
        dest = flag[2:].replace("-", "_")
        value = getattr(options, dest, None)
        given[dest] = str(value) if value not in (None, False) else os.environ.get(env) or None
    path = {k: Path(v) if v else None for k, v in given.items()}
    token = None
    if path["token_file"]:
        token = path["token_file"].read_text(encoding="utf-8").strip()
    # TLS when asked for, or when a CA, a client certificate or a token is given (a
    # token never travels in clear); the server name matters only then.
    tls = None
    if (
        given["tls"] not in (None, "", "0", "false")
        or token
        or any(path[name] for name in ("ca_file", "cert_file", "key_file"))
    ):
        tls = Tls(
            ca_file=path["ca_file"],
            cert_file=path["cert_file"],
            key_file=path["key_file"],
            server_name=given["server_name"] or "",
        )
    connection = Connection(options.server, tls=tls, token=token, timeout_s=CALL_TIMEOUT_S)
    try:
        connection.credentials()  # refuses a certificate without its key, up front
    except ValueError as error:
        raise CliError(str(error)) from error
    return Client(connection, options.collection)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    try:
        client = _client(options)
    except (CliError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        return _dispatch(client, options)
    except SearchError as error:
        message = client.explain(error)
    except CliError as error:
        message = str(error)
    except OSError as error:  # a file that cannot be written or read
        message = f"{error.filename or ''}: {error.strerror or error}".lstrip(": ")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
