"""Benchmarks: each ``python -m benchmarks.bench_*`` prints the figures in docs/."""

import os

# gRPC logs a line for every fork (the PostgreSQL helpers run subprocesses). Set here,
# before any benchmark imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
