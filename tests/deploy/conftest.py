"""Renders the Kustomize overlays with the real kubectl, once per test run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
# Not an overlay of its own: the base with components/external-postgres in place of
# components/cnpg, as deploy/README.md tells an operator with a database to do.
EXTERNAL = "external-postgres"
# The overlay whose database is a Citus cluster of its own StatefulSets.
CITUS = "citus"
# Not an overlay either: overlays/cpu with components/monitoring added, as
# deploy/README.md tells an operator who runs the Prometheus Operator to do.
MONITORING = "monitoring"

Objects = list[dict[str, Any]]


def kustomize(directory: Path) -> Objects:
    """The objects that `kubectl kustomize DIRECTORY` renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not on PATH, so the Kustomize overlays cannot be rendered "
            "(it needs Kustomize v5: kubectl 1.27 or later)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def variant(directory: Path, resource: Path, component: str) -> Objects:
    """What renders when an operator adds ``component`` to the kustomization ``resource``."""
    # Kustomize takes only relative paths to other kustomizations.
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: imagesearch\n"
        f"resources:\n  - {os.path.relpath(resource, directory)}\n"
        f"components:\n  - {os.path.relpath(K8S / 'components' / component, directory)}\n"
    )
    return kustomize(directory)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    """Each overlay's rendered objects, and those of the variants deploy/README.md names."""
    renders = {name: kustomize(K8S / "overlays" / name) for name in (*OVERLAYS, CITUS)}
    renders[EXTERNAL] = variant(
        tmp_path_factory.mktemp(EXTERNAL), K8S / "base", "external-postgres"
    )
    renders[MONITORING] = variant(
        tmp_path_factory.mktemp(MONITORING), K8S / "overlays" / "cpu", "monitoring"
    )
    return renders
