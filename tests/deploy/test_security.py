"""The manifests' security: TLS from cert-manager, callers files, egress, no passwords."""

from __future__ import annotations

import base64
import json
from pathlib import PurePosixPath
from typing import Any

import pytest

from search_service.settings import SearchSettings
from service_core.auth import Callers, Role
from tests.deploy.conftest import CITUS, EXTERNAL, OVERLAYS, Objects
from tests.deploy.test_manifests import ALL, find, one, selects, server_settings

# The renders with components/tls.
TLS = (*OVERLAYS, CITUS)


def pod_spec(objects: Objects, deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def secret_behind(objects: Objects, deployment: str, path: PurePosixPath | None) -> str:
    """The name of the Secret whose volume holds ``path`` in the deployment's container."""
    assert path is not None
    spec = pod_spec(objects, deployment)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in spec["containers"][0]["volumeMounts"]:
        if PurePosixPath(mount["mountPath"]) == path.parent:
            # A subPath mount is never updated: renewed files would not reach the server.
            assert "subPath" not in mount, mount
            assert mount.get("readOnly") is True, mount
            name: str = volumes[mount["name"]]["secret"]["secretName"]
            return name
    raise AssertionError(f"{deployment}: nothing mounted at {path.parent}")


def certificate_for(objects: Objects, secret: str) -> dict[str, Any]:
    [certificate] = [c for c in find(objects, "Certificate") if c["spec"]["secretName"] == secret]
    return certificate


@pytest.mark.parametrize("name", ALL)
def test_no_render_ships_a_password(rendered: dict[str, Objects], name: str) -> None:
    for secret in find(rendered[name], "Secret"):
        for field in ("data", "stringData"):
            assert "password" not in secret.get(field, {}), secret["metadata"]["name"]
    assert "CHANGE-ME" not in json.dumps(rendered[name])


@pytest.mark.parametrize("name", TLS)
def test_both_servers_serve_tls_from_renewed_certificates(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    for deployment in ("extractor", "search"):
        settings = server_settings(objects, deployment)
        assert settings.tls_cert_file is not None
        assert settings.tls_key_file is not None
        paths = (settings.tls_cert_file, settings.tls_key_file)
        secret = secret_behind(objects, deployment, PurePosixPath(paths[0]))
        assert secret_behind(objects, deployment, PurePosixPath(paths[1])) == secret
        certificate = certificate_for(objects, secret)["spec"]
        assert "server auth" in certificate["usages"]
        assert certificate["renewBefore"]  # cert-manager renews it; the server re-reads it
        assert settings.auth_file is not None
    extractor = server_settings(objects, "extractor")
    assert extractor.tls_client_ca_file is not None  # mTLS
    assert extractor.reflection == "off"


@pytest.mark.parametrize("name", TLS)
def test_search_reaches_the_extractor_over_mtls_as_a_configured_caller(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    search = server_settings(objects, "search")
    extractor = server_settings(objects, "extractor")
    assert isinstance(search, SearchSettings)
    assert search.extractor_tls_cert_file is not None
    client_secret = secret_behind(objects, "search", PurePosixPath(search.extractor_tls_cert_file))
    assert secret_behind(objects, "search", PurePosixPath(search.extractor_tls_key_file or "")) == (
        client_secret
    )
    client = certificate_for(objects, client_secret)["spec"]
    assert "client auth" in client["usages"]
    # The extractor verifies it by the CA bundle of its own Secret: the same issuer.
    server = certificate_for(
        objects, secret_behind(objects, "extractor", PurePosixPath(str(extractor.tls_cert_file)))
    )["spec"]
    assert client["issuerRef"] == server["issuerRef"]
    assert search.extractor_tls_ca_file is not None
    assert secret_behind(objects, "search", PurePosixPath(search.extractor_tls_ca_file)) == (
        client_secret
    )
    # The host the search service dials is a name in the extractor's certificate.
    host = search.extractor_address.removeprefix("dns:///").rpartition(":")[0]
    assert host in server["dnsNames"]
    # The extractor's callers file names the client certificate's identity, and no token.
    callers_secret = secret_behind(objects, "extractor", PurePosixPath(str(extractor.auth_file)))
    stored = one(objects, "Secret", callers_secret)["data"]["callers"]
    callers = Callers.parse(base64.b64decode(stored).decode())
    assert callers.tokens == ()
    identity = client["dnsNames"][0]
    assert callers.identities[identity].role >= Role.READER


@pytest.mark.parametrize("name", TLS)
def test_search_callers_come_from_a_secret_the_operator_makes(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    settings = server_settings(objects, "search")
    secret = secret_behind(objects, "search", PurePosixPath(str(settings.auth_file)))
    assert secret == "search-callers"  # the name deploy/README.md's command creates
    assert not find(objects, "Secret", secret)
    assert settings.rate_limit_per_s > 0


def egress_rules(objects: Objects, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        rule
        for policy in find(objects, "NetworkPolicy")
        if "Egress" in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get("egress", [])
    ]


@pytest.mark.parametrize("name", ALL)
def test_search_egress_reaches_only_postgres_the_extractor_and_dns(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in find(objects, "Deployment")
    }
    rules = egress_rules(objects, pods["search"])
    kinds = set()
    for rule in rules:
        ports = {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}
        for peer in rule["to"]:
            if ports == {(50051, "TCP")}:
                assert set(peer) == {"podSelector"}
                assert selects(peer["podSelector"], pods["extractor"])
                kinds.add("extractor")
            elif ports == {(53, "UDP"), (53, "TCP")}:
                assert peer["namespaceSelector"]["matchLabels"] == {
                    "kubernetes.io/metadata.name": "kube-system"
                }
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                kinds.add("dns")
            elif ports == {(5432, "TCP")}:
                if name == EXTERNAL:
                    assert set(peer) == {"ipBlock"}
                elif name == CITUS:
                    # The coordinator only: the workers are its business.
                    expected = {"app.kubernetes.io/name": "citus-coordinator"}
                    assert peer == {"podSelector": {"matchLabels": expected}}
                else:
                    [cluster] = find(objects, "Cluster")
                    expected = {"cnpg.io/cluster": cluster["metadata"]["name"]}
                    assert peer == {"podSelector": {"matchLabels": expected}}
                kinds.add("postgres")
            else:
                pytest.fail(f"search pods may reach {peer} on {sorted(ports)}")
    assert kinds == {"extractor", "dns", "postgres"}
