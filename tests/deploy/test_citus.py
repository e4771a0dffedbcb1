"""The Citus overlay: its wiring, and its scripts run against a real local Citus cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from devenv.postgres import LocalPostgres
from search_service.schema import migrate
from search_service.settings import SearchSettings
from tests.deploy.conftest import CITUS, DEPLOY, K8S, Objects, kustomize
from tests.deploy.test_manifests import (
    find,
    one,
    peers_allowed,
    policies_for,
    selects,
    server_settings,
)

APP_USER = "imagesearch"
# Quotes, a backslash and a space: the registration must quote it as libpq reads it.
APP_PASSWORD = "it's a \\pass word"
DATABASE = "imagesearch"


def statefulset(objects: Objects, name: str) -> dict[str, Any]:
    return one(objects, "StatefulSet", name)


def pod_labels(objects: Objects, kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = one(objects, kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


def secret_refs(container: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        v["name"]: (v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
        for v in container.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    }


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}


def cluster_config(objects: Objects) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap", "citus-cluster")["data"]
    return data


def headless_service_of(objects: Objects, host: str, port: int) -> dict[str, Any]:
    """The headless Service whose name ``host`` is (``pod.service`` or ``service``)."""
    service = one(objects, "Service", host.split(".")[-1])
    assert service["spec"]["clusterIP"] == "None", f"{host}: not a headless Service"
    assert port in [p["port"] for p in service["spec"]["ports"]]
    return service


def address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def script_path(objects: Objects, container: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    """The ConfigMap key a container's `bash SCRIPT` command runs, checked to be mounted."""
    command = container["command"]
    assert command[0] == "bash"
    script = PurePosixPath(command[1])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(script.parent)])
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    assert script.name in config_map["data"], f"{script} is not in {config_map['metadata']}"
    return script.name


def test_search_is_wired_to_the_coordinator(rendered: dict[str, Objects]) -> None:
    objects = rendered[CITUS]
    settings = server_settings(objects, "search")
    assert isinstance(settings, SearchSettings)
    dsn = urlsplit(settings.database_url)
    assert dsn.hostname is not None
    service = headless_service_of(objects, dsn.hostname, dsn.port or 5432)
    coordinator = statefulset(objects, "citus-coordinator")
    assert coordinator["spec"]["serviceName"] == service["metadata"]["name"]
    assert coordinator["spec"]["replicas"] == 1
    assert selects(
        {"matchLabels": service["spec"]["selector"]},
        pod_labels(objects, "StatefulSet", "citus-coordinator"),
    )
    # No credentials inline; TLS required (Citus turns it on with its own certificate).
    assert dsn.username is None
    assert dsn.password is None
    assert parse_qs(dsn.query)["sslmode"] == ["require"]
    search = one(objects, "Deployment", "search")["spec"]["template"]["spec"]["containers"][0]
    app_secret = {
        "PGUSER": ("imagesearch-db-app", "username"),
        "PGPASSWORD": ("imagesearch-db-app", "password"),
    }
    assert secret_refs(search) == app_secret
    # Every node creates that role and the database the DSN names (init-db.sh).
    for name in ("citus-coordinator", "citus-worker"):
        [node] = statefulset(objects, name)["spec"]["template"]["spec"]["containers"]
        assert literal_env(node)["POSTGRES_DB"] == dsn.path.lstrip("/")
        refs = secret_refs(node)
        assert (refs["APP_USER"], refs["APP_PASSWORD"]) == tuple(app_secret.values())
        # The superuser's password is also the server's PGPASSWORD: the image keeps it
        # for the connections between nodes.
        assert refs["POSTGRES_PASSWORD"] == refs["PGPASSWORD"]
        assert node["image"].startswith("citusdata/citus:")
        mounts = {m["mountPath"] for m in node["volumeMounts"]}
        data = PurePosixPath(literal_env(node)["PGDATA"])
        assert str(data.parent) in mounts  # the PersistentVolumeClaim
        assert "/docker-entrypoint-initdb.d/010-imagesearch.sh" in mounts
    # No Secret in the render: the operator creates both (the component says how).
    assert not find(objects, "Secret", "imagesearch-db-app")
    assert not find(objects, "Secret", "citus-superuser")


def assert_registers_every_worker(objects: Objects) -> None:
    """The Job registers, and the search pods wait for, each pod of the worker StatefulSet."""
    config = cluster_config(objects)
    workers = statefulset(objects, "citus-worker")["spec"]
    service = workers["serviceName"]
    addresses = [address(a) for a in config["CITUS_WORKERS"].split()]
    # One address per pod of the StatefulSet, by its stable name in the headless Service.
    assert [host for host, _ in addresses] == [
        f"citus-worker-{i}.{service}" for i in range(workers["replicas"])
    ]
    assert workers["replicas"] >= 2
    for host, port in addresses:
        selector = headless_service_of(objects, host, port)["spec"]["selector"]
        assert selects(
            {"matchLabels": selector}, pod_labels(objects, "StatefulSet", "citus-worker")
        )
    host, port = address(config["CITUS_COORDINATOR"])
    assert (
        host
        == f"citus-coordinator-0.{statefulset(objects, 'citus-coordinator')['spec']['serviceName']}"
    )
    headless_service_of(objects, host, port)
    job = one(objects, "Job", "citus-register")["spec"]["template"]["spec"]
    [register] = job["containers"]
    assert script_path(objects, register, job) == "register.sh"
    assert {"configMapRef": {"name": "citus-cluster"}} in register["envFrom"]
    [node] = statefulset(objects, "citus-coordinator")["spec"]["template"]["spec"]["containers"]
    assert secret_refs(register)["PGPASSWORD"] == secret_refs(node)["POSTGRES_PASSWORD"]
    # The search pods start once those workers are registered (their migrations
    # distribute the tables over the workers known then).
    search = one(objects, "Deployment", "search")["spec"]["template"]["spec"]
    [wait] = search["initContainers"]
    assert script_path(objects, wait, search) == "wait-for-workers.sh"
    assert {"configMapRef": {"name": "citus-cluster"}} in wait["envFrom"]
    assert secret_refs(wait) == secret_refs(search["containers"][0])


def test_registration_job_names_every_worker_pod(rendered: dict[str, Objects]) -> None:
    assert_registers_every_worker(rendered[CITUS])
    assert statefulset(rendered[CITUS], "citus-worker")["spec"]["replicas"] == 2


def test_readme_recipe_for_adding_workers_registers_them(tmp_path: Path) -> None:
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("### Adding workers") :]
    block = section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n")]
    overlay = os.path.relpath(K8S / "overlays" / CITUS, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {overlay}\n" + textwrap.dedent(block)
    )
    objects = kustomize(tmp_path)
    assert statefulset(objects, "citus-worker")["spec"]["replicas"] == 3
    assert_registers_every_worker(objects)


def test_network_policies_allow_only_the_citus_paths(rendered: dict[str, Objects]) -> None:
    objects = rendered[CITUS]
    pods = {
        name: pod_labels(objects, kind, name)
        for kind, name in (
            ("Deployment", "search"),
            ("Deployment", "extractor"),
            ("Job", "citus-register"),
            ("StatefulSet", "citus-coordinator"),
            ("StatefulSet", "citus-worker"),
        )
    }

    def callers(target: str) -> set[str]:
        """The pods that the ingress policies of ``target``'s pods admit on 5432."""
        peers = [
            peer
            for policy in policies_for(objects, pods[target])
            for peer in peers_allowed(policy, 5432)
        ]
        assert peers, f"nothing reaches {target}"
        for peer in peers:
            assert set(peer) == {"podSelector"}, f"{target} open to {peer}"
        return {
            name
            for name, labels in pods.items()
            if any(selects(p["podSelector"], labels) for p in peers)
        }

    assert callers("citus-coordinator") == {"search", "citus-register", "citus-worker"}
    assert callers("citus-worker") == {"citus-coordinator", "citus-worker", "citus-register"}


# The scripts of the citus-scripts ConfigMap, run as the pods run them, against three
# local PostgreSQL 15 clusters with Citus (../shared/citus/install.sh).


def run_script(
    objects: Objects, key: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    script = one(objects, "ConfigMap", "citus-scripts")["data"][key]
    return subprocess.run(
        ["bash", "-c", script],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def psql_as_app(node: LocalPostgres, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *("psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1"),
            *("-h", "127.0.0.1", "-p", str(node.port), "-U", APP_USER, "-d", DATABASE),
            *("-c", sql),
        ],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# Server settings sized for the StatefulSets' machines, not applied to the local nodes.
SIZED = {"max_connections", "shared_buffers", "work_mem", "maintenance_work_mem"}


def server_args(objects: Objects, name: str) -> dict[str, str]:
    """The `-c name=value` settings a node's container passes to postgres."""
    [node] = statefulset(objects, name)["spec"]["template"]["spec"]["containers"]
    args = node["args"]
    assert args[0] == "postgres"
    assert args[1::2] == ["-c"] * (len(args) // 2), args
    return dict(arg.split("=", 1) for arg in args[2::2])


@pytest.fixture(scope="module")
def citus_nodes(rendered: dict[str, Objects]) -> Iterator[list[LocalPostgres]]:
    """A coordinator and two workers, set up as the image and init-db.sh set up a node."""
    root = Path(tempfile.mkdtemp(prefix="imagesearch-citus-deploy-"))
    root.chmod(0o755)
    nodes = [LocalPostgres(root / name, durable=False) for name in ("c", "w0", "w1")]
    roles = ["citus-coordinator", "citus-worker", "citus-worker"]
    if not (nodes[0].bindir.parent / "lib" / "citus.so").exists():
        pytest.skip(
            f"Citus is not installed in {nodes[0].bindir.parent} (../shared/citus/install.sh)"
        )

    def prepare(node: LocalPostgres, role: str) -> None:
        node.start()
        # The StatefulSet's server settings, but those sized for its machines.
        settings = {k: v for k, v in server_args(rendered[CITUS], role).items() if k not in SIZED}
        with (node.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write("shared_preload_libraries = 'citus'\n")
            conf.writelines(f"{k} = '{v}'\n" for k, v in settings.items())
        node.stop()
        node.start()
        # The image's database holds citus only (its 001-create-citus-extension.sql);
        # LocalPostgres adds cube, which init-db.sh makes itself.
        node.psql("DROP EXTENSION cube", DATABASE)
        node.psql("CREATE EXTENSION citus", DATABASE)
        environ = {"PGHOST": "127.0.0.1", "PGPORT": str(node.port), "POSTGRES_DB": DATABASE}
        environ |= {"POSTGRES_USER": "postgres", "APP_USER": APP_USER, "APP_PASSWORD": APP_PASSWORD}
        done = run_script(rendered[CITUS], "010-imagesearch.sh", environ)
        assert done.returncode == 0, done.stderr

    # The servers' own libpq (Citus's connections between nodes) looks for client
    # certificates under $HOME, which the unprivileged server user may not enter.
    with mock.patch.dict(os.environ, {"HOME": str(root)}):
        try:
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(prepare, nodes, roles))
            # The workers ask the app role for its password (the local clusters trust
            # everyone else), so a query that reaches them proves the coordinator has it.
            for worker in nodes[1:]:
                hba = worker.data_dir / "pg_hba.conf"
                hba.write_text(
                    f"host all {APP_USER} 127.0.0.1/32 scram-sha-256\n" + hba.read_text()
                )
                worker.psql("SELECT pg_reload_conf()")
            yield nodes
        finally:
            for node in nodes:
                node.stop()
            shutil.rmtree(root, ignore_errors=True)


def scripts_env(nodes: list[LocalPostgres]) -> dict[str, str]:
    """The environment the Job and the init container give the scripts, for local nodes."""
    coordinator, *workers = nodes
    return {
        "CITUS_COORDINATOR": f"127.0.0.1:{coordinator.port}",
        "CITUS_WORKERS": " ".join(f"127.0.0.1:{w.port}" for w in workers),
        "DATABASE": DATABASE,
        "APP_USER": APP_USER,
        "APP_PASSWORD": APP_PASSWORD,
        "REGISTER_ATTEMPTS": "3",
        "REGISTER_INTERVAL_S": "1",
        "WAIT_INTERVAL_S": "0.2",
        "PGUSER": APP_USER,
        "PGPASSWORD": "superuser",
    }


def test_scripts_register_the_workers_idempotently_and_the_app_role_reaches_them(
    rendered: dict[str, Objects], citus_nodes: list[LocalPostgres]
) -> None:
    objects = rendered[CITUS]
    coordinator, *workers = citus_nodes
    env = scripts_env(citus_nodes)
    # Before registration the search pods' init container keeps waiting.
    with pytest.raises(subprocess.TimeoutExpired):
        run_script(objects, "wait-for-workers.sh", env, timeout=2)
    nodes_query = (
        "SELECT nodeid, groupid, nodename, nodeport, isactive FROM pg_dist_node ORDER BY 1"
    )
    registered = []
    for _ in range(2):  # a second run (the Job again, after adding workers) changes nothing
        done = run_script(objects, "register.sh", env)
        assert done.returncode == 0, done.stderr
        registered.append(coordinator.psql(nodes_query, DATABASE))
    assert registered[0] == registered[1]
    rows = [line.split("|") for line in registered[0].splitlines()]
    assert {(r[2], int(r[3]), r[4]) for r in rows} == {
        ("127.0.0.1", node.port, "t") for node in citus_nodes
    }
    assert [r[1] for r in rows if int(r[3]) == coordinator.port] == ["0"]  # the coordinator
    # Every node holds both roles' passwords for its connections to the others.
    for node in citus_nodes:
        stored = node.psql(
            "SELECT rolename, nodeid, authinfo FROM pg_dist_authinfo ORDER BY 1, 2", DATABASE
        )
        quoted = "password='it\\'s a \\\\pass word'"
        assert stored.splitlines() == [
            f"{APP_USER}|-1|{quoted}",
            f"{APP_USER}|0|{quoted}",
            "postgres|-1|password='superuser'",
            "postgres|0|password='superuser'",
        ]
    done = run_script(objects, "wait-for-workers.sh", env, timeout=30)
    assert done.returncode == 0, done.stderr
    # The app role, through the coordinator: a distributed table with a cube column,
    # its shards on both workers, ranked by <-> in every shard.
    done = psql_as_app(
        coordinator,
        "CREATE TABLE deploy_check (key text PRIMARY KEY, v cube);"
        "SELECT create_distributed_table('deploy_check', 'key');"
        "INSERT INTO deploy_check SELECT 'k' || i, cube(ARRAY[i, i]) FROM generate_series(1, 50) i;"
        "SELECT key FROM deploy_check ORDER BY v <-> cube(ARRAY[3.1, 3.1]) LIMIT 2;",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["k3", "k4"]
    shards = coordinator.psql("SELECT DISTINCT nodeport FROM citus_shards ORDER BY 1", DATABASE)
    assert sorted(map(int, shards.split())) == sorted(w.port for w in workers)
    # Directly, without the password, a worker refuses the app role: so the coordinator
    # authenticated with the one register.sh stored.
    refused = psql_as_app(workers[0], "SELECT 1")
    assert refused.returncode != 0
    assert "password" in refused.stderr


async def test_the_app_role_migrates_the_schema_on_the_registered_cluster(
    rendered: dict[str, Objects], citus_nodes: list[LocalPostgres]
) -> None:
    registered = run_script(rendered[CITUS], "register.sh", scripts_env(citus_nodes))
    assert registered.returncode == 0, registered.stderr
    # Then what the search pods do at their first start, as the role the overlay gives
    # them (owner of the database, no superuser).
    coordinator, *workers = citus_nodes
    connection = await asyncpg.connect(
        host="127.0.0.1", port=coordinator.port, user=APP_USER, database=DATABASE
    )
    try:
        assert await migrate(connection)
        assert await connection.fetchval("SELECT to_regclass('images') IS NOT NULL")
        # The shards of whatever the migrations distribute land on the registered
        # workers (reference tables have a copy on the coordinator too).
        ports = await connection.fetch(
            "SELECT DISTINCT nodeport FROM citus_shards WHERE citus_table_type = 'distributed'"
        )
        assert {row["nodeport"] for row in ports} in (set(), {w.port for w in workers})
    finally:
        await connection.close()


@pytest.mark.parametrize(("index", "name"), [(0, "citus-coordinator"), (1, "citus-worker")])
def test_node_settings_are_real_and_take_effect(
    rendered: dict[str, Objects], citus_nodes: list[LocalPostgres], index: int, name: str
) -> None:
    node = citus_nodes[index]
    settings = server_args(rendered[CITUS], name)
    assert settings["wal_level"] == "logical"
    known = set(node.psql("SELECT name FROM pg_settings", DATABASE).split())
    # A misspelt citus.* name would only warn at start; here it fails.
    assert set(settings) <= known, sorted(set(settings) - known)
    for key, value in settings.items():
        if key not in SIZED:
            assert node.psql(f"SHOW {key}", DATABASE) == value, key
