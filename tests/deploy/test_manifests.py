"""The Kubernetes manifests: rendered by kubectl, schema-checked, linted, and their properties."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from extractor_service.settings import ENV_PREFIX as EXTRACTOR_PREFIX
from extractor_service.settings import ExtractorSettings
from search_service.settings import ENV_PREFIX as SEARCH_PREFIX
from search_service.settings import SearchSettings
from service_core.config import load_settings
from service_core.server import LIVENESS_SERVICE
from service_core.settings import ServerSettings
from tests.deploy.conftest import CITUS, DEPLOY, EXTERNAL, OVERLAYS, ROOT, Objects

ALL = (*OVERLAYS, EXTERNAL, CITUS)
# The oldest Kubernetes the manifests promise to work on, and the newest schemas known.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Custom resources: no schema in kubernetes-validate; their fields are checked below.
CERT_MANAGER = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}
CUSTOM_RESOURCES = {("postgresql.cnpg.io/v1", "Cluster"), *CERT_MANAGER}
# The custom resources each render holds (the rest of ALL: CUSTOM_RESOURCES).
CUSTOM_RESOURCES_OF = {EXTERNAL: set(), CITUS: CERT_MANAGER}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SETTINGS: dict[str, tuple[type[ServerSettings], str]] = {
    "extractor": (ExtractorSettings, EXTRACTOR_PREFIX),
    "search": (SearchSettings, SEARCH_PREFIX),
}
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def find(objects: Objects, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(objects: Objects) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every workload's pod spec, with the workload's kind and name."""
    for o in objects:
        if o["kind"] in WORKLOADS:
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def service_config_maps(objects: Objects) -> list[dict[str, Any]]:
    """The ConfigMaps that hold a server's settings (extractor-config-*, search-config-*)."""
    return [
        c
        for c in find(objects, "ConfigMap")
        if c["metadata"]["name"].rsplit("-", 1)[0] in {f"{s}-config" for s in SETTINGS}
    ]


def containers(pod_spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as these manifests use) selects labels."""
    assert set(selector) <= {"matchLabels"}, f"unexpected selector form {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def environment(objects: Objects, container: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment from its ConfigMaps and literal values (not Secrets)."""
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = one(objects, "ConfigMap", source["configMapRef"]["name"])
        environ.update(config_map["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
    return environ


def server_settings(objects: Objects, name: str) -> ServerSettings:
    """The settings the server of Deployment ``name`` starts with, loaded as it loads them."""
    cls, prefix = SETTINGS[name]
    container = one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return load_settings(
        cls, prefix=prefix, environ=environment(objects, container), argv=container.get("args")
    )


def port_named(container: Mapping[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = ports[name]
    assert isinstance(port, int)
    return port


QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
FACTORS: dict[str | None, Decimal | int] = {
    None: 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int) -> Decimal:
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return Decimal(match.group(1)) * FACTORS[match.group(2)]


@pytest.mark.parametrize("name", ALL)
def test_render_holds_every_part(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    for kind, names in {
        "Namespace": ["imagesearch"],
        "Deployment": ["extractor", "search"],
        "Service": ["extractor", "search"],
        "PodDisruptionBudget": ["extractor", "search"],
        "HorizontalPodAutoscaler": ["extractor"],
        "NetworkPolicy": ["default-deny-ingress", "extractor", "search"],
    }.items():
        for object_name in names:
            one(objects, kind, object_name)
    others = {"citus-cluster", "citus-scripts"} if name == CITUS else set()
    assert {o["metadata"]["name"] for o in find(objects, "ConfigMap")} - {
        c["metadata"]["name"] for c in service_config_maps(objects)
    } == others
    assert len(service_config_maps(objects)) == 2
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == "imagesearch", o["metadata"]["name"]
    clusters = find(objects, "Cluster")
    assert len(clusters) == (1 if name in OVERLAYS else 0)
    assert {s["metadata"]["name"] for s in find(objects, "StatefulSet")} == (
        {"citus-coordinator", "citus-worker"} if name == CITUS else set()
    )


@pytest.mark.parametrize("name", ALL)
def test_objects_validate_against_kubernetes_schemas(
    rendered: dict[str, Objects], name: str
) -> None:
    skipped = set()
    for o in rendered[name]:
        kind = (o["apiVersion"], o["kind"])
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                assert kind in CUSTOM_RESOURCES, f"no schema for {kind} in Kubernetes {version}"
                skipped.add(kind)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{o['kind']}/{o['metadata']['name']} is invalid for Kubernetes {version}: "
                    f"{error.message} at {'.'.join(map(str, error.path))}"
                )
    assert skipped == CUSTOM_RESOURCES_OF.get(name, CUSTOM_RESOURCES)


def test_yaml_sources_pass_yamllint() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-c",
            str(DEPLOY / ".yamllint"),
            str(DEPLOY),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ALL)
def test_probes_are_native_grpc_on_the_servers_port(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    for deployment in ("extractor", "search"):
        settings = server_settings(objects, deployment)
        container = one(objects, "Deployment", deployment)["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert port_named(container, "grpc") == settings.port
        assert port_named(container, "metrics") == settings.metrics_port
        assert settings.host == "0.0.0.0"
        # Kubelet probes cannot speak TLS: with TLS on, they use the health-only port.
        probe_port = settings.port
        if settings.tls_cert_file is not None:
            assert port_named(container, "health") == settings.health_port
            probe_port = settings.health_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # Startup and readiness: the whole server's status, NOT_SERVING until the
            # model / pool is ready and while the database is unreachable. Liveness:
            # SERVING while the process serves at all.
            service = LIVENESS_SERVICE if probe == "livenessProbe" else ""
            assert container[probe]["grpc"] == {"port": probe_port, "service": service}, probe
            assert set(container[probe]) - {"grpc"} <= {
                "periodSeconds",
                "timeoutSeconds",
                "failureThreshold",
                "successThreshold",
                "initialDelaySeconds",
            }, f"{deployment} {probe} is not (only) a gRPC probe"


@pytest.mark.parametrize("name", ALL)
def test_images_are_pinned(rendered: dict[str, Objects], name: str) -> None:
    images = [c["image"] for _, spec in pod_specs(rendered[name]) for c in containers(spec)]
    for o in rendered[name]:
        if o["kind"] == "Cluster":
            images.append(o["spec"]["imageName"])
    assert images
    for image in images:
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository, f"{image}: no tag"
        assert "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: latest is not a version"
    for deployment in ("extractor", "search"):
        spec = one(rendered[name], "Deployment", deployment)["spec"]["template"]["spec"]
        assert spec["containers"][0]["image"].endswith(f":{PROJECT_VERSION}"), (
            f"{deployment}'s image is not the version pyproject.toml declares"
        )


@pytest.mark.parametrize("name", ALL)
def test_pods_run_unprivileged(rendered: dict[str, Objects], name: str) -> None:
    for where, spec in pod_specs(rendered[name]):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["runAsGroup"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        # A Service link variable such as EXTRACTOR_PORT=tcp://... would shadow a setting.
        assert spec["enableServiceLinks"] is False, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), where
        writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(spec):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context.get("privileged", False) is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            # With a read-only root, /tmp is a volume of its own.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in writable, f"{where}: no writable /tmp"


def test_pods_run_as_the_images_user(rendered: dict[str, Objects]) -> None:
    users = {}
    for dockerfile in ("extractor", "extractor-gpu", "search"):
        text = (DEPLOY / "docker" / f"{dockerfile}.Dockerfile").read_text()
        user = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
        assert len(user) == 1, dockerfile
        users[dockerfile] = (int(user[0][0]), int(user[0][1]))
    for name in OVERLAYS:
        for deployment in ("extractor", "search"):
            pod = one(rendered[name], "Deployment", deployment)["spec"]["template"]["spec"]
            image = deployment if (deployment, name) != ("extractor", "gpu") else "extractor-gpu"
            context = pod["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == users[image]


def pre_stop_seconds(container: Mapping[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    match = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[-1])
    assert match, f"unexpected preStop command {command}"
    return float(match.group(1))


@pytest.mark.parametrize("name", ALL)
def test_grace_periods_cover_the_servers_shutdown(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    for deployment in ("extractor", "search"):
        settings = server_settings(objects, deployment)
        spec = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        # What SIGTERM sets going: the preStop pause comes first, then the server drains
        # its calls for grace_period_s, then the search service closes its pool.
        needed = pre_stop_seconds(spec["containers"][0]) + settings.grace_period_s
        if isinstance(settings, SearchSettings):
            needed += settings.pool_close_timeout_s
        assert spec["terminationGracePeriodSeconds"] > needed, deployment
        # The ConfigMap states the grace period the pod was sized for.
        assert settings.grace_period_s > 0


def test_grace_period_default_is_what_the_config_maps_state() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    for service, (_, prefix) in SETTINGS.items():
        values = dict(
            line.split("=", 1)
            for line in (DEPLOY / "k8s" / "base" / f"{service}.env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        assert float(values[f"{prefix}GRACE_PERIOD_S"]) == defaults["grace_period_s"]


@pytest.mark.parametrize("name", ALL)
def test_config_maps_hold_only_real_settings(rendered: dict[str, Objects], name: str) -> None:
    for config_map in service_config_maps(rendered[name]):
        service = config_map["metadata"]["name"].split("-")[0]
        cls, prefix = SETTINGS[service]
        fields = {prefix + f.name.upper() for f in dataclasses.fields(cls)}
        unknown = set(config_map["data"]) - fields
        assert not unknown, f"{config_map['metadata']['name']}: not settings: {sorted(unknown)}"
        # And every value parses and passes the settings' own validation.
        load_settings(cls, prefix=prefix, environ=config_map["data"], argv=[])


@pytest.mark.parametrize("name", ALL)
def test_every_container_has_requests_and_limits(rendered: dict[str, Objects], name: str) -> None:
    for where, spec in pod_specs(rendered[name]):
        for container in containers(spec):
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, (where, resource)
    for cluster in find(rendered[name], "Cluster"):
        assert {"cpu", "memory"} <= set(cluster["spec"]["resources"]["requests"])


@pytest.mark.parametrize("name", ALL)
def test_gpu_only_where_the_overlay_says(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    settings = server_settings(objects, "extractor")
    assert isinstance(settings, ExtractorSettings)
    container = one(objects, "Deployment", "extractor")["spec"]["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
        assert "extractor-gpu:" in container["image"]
    else:
        assert "nvidia.com/gpu" not in limits
        assert settings.providers == ("CPUExecutionProvider",)
        assert "extractor-gpu" not in container["image"]


@pytest.mark.parametrize("name", ALL)
def test_hpa_scales_the_extractor(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    hpa = one(objects, "HorizontalPodAutoscaler", "extractor")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "extractor",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    # The GPU overlay also scales on the queue (components/queue-autoscaling): a GPU can
    # be saturated while the pod's CPUs idle. tests/deploy/test_monitoring checks it.
    assert set(kinds) == ({"Resource", "Pods"} if name == "gpu" else {"Resource"})
    # The HPA owns the replica count: a replicas field would reset it at every apply.
    assert "replicas" not in one(objects, "Deployment", "extractor")["spec"]


@pytest.mark.parametrize("name", ALL)
def test_services_and_budgets_select_their_pods(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    for deployment in ("extractor", "search"):
        template = one(objects, "Deployment", deployment)["spec"]["template"]
        labels = template["metadata"]["labels"]
        container = template["spec"]["containers"][0]
        service = one(objects, "Service", deployment)
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        for port in service["spec"]["ports"]:
            port_named(container, port["targetPort"])
        budget = one(objects, "PodDisruptionBudget", deployment)
        assert selects(budget["spec"]["selector"], labels)
        assert budget["spec"]["maxUnavailable"] == 1


def peers_allowed(policy: Mapping[str, Any], port: int) -> list[dict[str, Any]]:
    """The `from` peers of every ingress rule of ``policy`` that opens ``port``."""
    peers = []
    for rule in policy["spec"].get("ingress", []):
        ports = [p["port"] for p in rule.get("ports", [])]
        if not ports or port in ports:
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule open to all sources"
            peers += rule["from"]
    return peers


def policies_for(objects: Objects, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        p
        for p in find(objects, "NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]


@pytest.mark.parametrize("name", ALL)
def test_network_policies(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    deny = one(objects, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in find(objects, "Deployment")
    }
    for service, settings in (
        ("extractor", server_settings(objects, "extractor")),
        ("search", server_settings(objects, "search")),
    ):
        # Only callers in this namespace: pod selectors, no namespaces, no addresses.
        peers = [
            peer
            for policy in policies_for(objects, pods[service])
            for peer in peers_allowed(policy, settings.port)
        ]
        assert peers, f"nothing may call {service}"
        for peer in peers:
            assert set(peer) == {"podSelector"}, f"{service}: {peer} is not in-namespace"
    extractor = one(objects, "NetworkPolicy", "extractor")["spec"]
    assert extractor["egress"] == []
    assert "Egress" in extractor["policyTypes"]
    for cluster in find(objects, "Cluster"):
        db_labels = {"cnpg.io/cluster": cluster["metadata"]["name"]}
        peers = [
            peer
            for policy in policies_for(objects, db_labels)
            for peer in peers_allowed(policy, 5432)
        ]
        # Only the search service, and the database's own instances (replication).
        for peer in peers:
            assert set(peer) == {"podSelector"}, f"PostgreSQL open to {peer}"
            assert selects(peer["podSelector"], pods["search"]) or selects(
                peer["podSelector"], db_labels
            ), f"PostgreSQL open to {peer}"
        assert any(selects(p["podSelector"], pods["search"]) for p in peers)
        assert not any(selects(p["podSelector"], pods["extractor"]) for p in peers)


@pytest.mark.parametrize("name", OVERLAYS)
def test_search_is_wired_to_the_cnpg_cluster(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    [cluster] = find(objects, "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    cluster_name = cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["instances"] >= 2
    initdb = spec["bootstrap"]["initdb"]
    assert "CREATE EXTENSION IF NOT EXISTS cube" in initdb["postInitApplicationSQL"]
    settings = server_settings(objects, "search")
    assert isinstance(settings, SearchSettings)
    dsn = urlsplit(settings.database_url)
    # The operator's read-write Service, the Cluster's database; no credentials inline.
    assert dsn.hostname == f"{cluster_name}-rw"
    assert dsn.path == f"/{initdb['database']}"
    assert dsn.username is None
    assert dsn.password is None
    assert "sslmode=verify-full" in dsn.query
    container = one(objects, "Deployment", "search")["spec"]["template"]["spec"]["containers"][0]
    secret_refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v
    }
    # The Secret the operator generates for the owner: <cluster>-app, basic-auth keys.
    assert secret_refs == {
        "PGUSER": {"name": f"{cluster_name}-app", "key": "username"},
        "PGPASSWORD": {"name": f"{cluster_name}-app", "key": "password"},
    }
    volumes = {
        v["name"]: v
        for v in one(objects, "Deployment", "search")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["db-ca"]["secret"]["secretName"] == f"{cluster_name}-ca"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = environment(objects, container)
    assert env["PGSSLROOTCERT"] == f"{mounts['db-ca']}/ca.crt"


@pytest.mark.parametrize("name", ALL)
def test_search_calls_the_extractor_service(rendered: dict[str, Objects], name: str) -> None:
    objects = rendered[name]
    settings = server_settings(objects, "search")
    assert isinstance(settings, SearchSettings)
    host, _, port = settings.extractor_address.removeprefix("dns:///").rpartition(":")
    service = one(objects, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert service["spec"]["selector"]["app.kubernetes.io/name"] == "extractor"
    # round_robin needs one address per pod, which only a headless Service gives.
    assert service["spec"].get("clusterIP") == "None"


def test_external_database_variant_ships_no_credentials(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered[EXTERNAL]
    # The operator creates imagesearch-db-app (the command is in the component).
    assert not find(objects, "Secret", "imagesearch-db-app")
    container = one(objects, "Deployment", "search")["spec"]["template"]["spec"]["containers"][0]
    refs = {v["valueFrom"]["secretKeyRef"]["name"] for v in container["env"] if "valueFrom" in v}
    assert refs == {"imagesearch-db-app"}
    settings = server_settings(objects, "search")
    assert isinstance(settings, SearchSettings)
    assert urlsplit(settings.database_url).hostname != "imagesearch-db-rw"
    # No CloudNativePG objects, and so no policy for its pods either.
    assert not find(objects, "Cluster")
    assert not find(objects, "NetworkPolicy", "imagesearch-db")
