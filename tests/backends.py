"""Parametrisation over the two storage backends: single-node PostgreSQL and Citus.

A test decorated with ``@BOTH`` runs once on each; its ``database_url`` names a fresh
database on that backend. The Citus runs carry the ``citus`` marker
(``pytest -m "not citus"`` leaves them out).
"""

from __future__ import annotations

import pytest

BOTH = pytest.mark.parametrize(
    "backend", ["postgres", pytest.param("citus", marks=pytest.mark.citus)], indirect=True
)
