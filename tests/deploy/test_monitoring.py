"""Monitoring: the PodMonitor, the dashboard's PromQL against the metric contract, the HPA."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import promql_parser
import pytest
import yaml

from extractor_service.settings import ExtractorSettings
from tests.deploy.conftest import K8S, MONITORING, Objects
from tests.deploy.test_manifests import (
    ALL,
    CUSTOM_RESOURCES,
    KUBERNETES_VERSIONS,
    find,
    one,
    peers_allowed,
    policies_for,
    port_named,
    server_settings,
)

DASHBOARD = K8S / "components" / "monitoring" / "dashboard.json"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"

# The metric contract the services emit (the helpers' shared brief): family -> its labels.
GRPC = frozenset({"grpc_type", "grpc_service", "grpc_method"})
COUNTERS: dict[str, frozenset[str]] = {
    "extractor_images_total": frozenset({"outcome"}),
    "search_ingested_items_total": frozenset({"status"}),
    "process_cpu_seconds_total": frozenset(),
    "python_gc_objects_collected_total": frozenset({"generation"}),
    "python_gc_objects_uncollectable_total": frozenset({"generation"}),
    "python_gc_collections_total": frozenset({"generation"}),
}
GAUGES: dict[str, frozenset[str]] = {
    "extractor_queue_depth": frozenset(),
    "search_db_pool_connections": frozenset({"state"}),
    "search_db_pool_max_connections": frozenset(),
    "search_projection_state": frozenset({"collection", "state"}),
    "search_collection_images": frozenset({"collection"}),
    "process_virtual_memory_bytes": frozenset(),
    "process_resident_memory_bytes": frozenset(),
    "process_start_time_seconds": frozenset(),
    "process_open_fds": frozenset(),
    "process_max_fds": frozenset(),
    "python_info": frozenset({"implementation", "major", "minor", "patchlevel", "version"}),
}
HISTOGRAMS: dict[str, frozenset[str]] = {
    "extractor_batch_size": frozenset(),
    "extractor_preprocess_seconds": frozenset(),
    "extractor_inference_seconds": frozenset(),
    "search_query_seconds": frozenset({"stage"}),
}
for side in ("server", "client"):
    COUNTERS[f"grpc_{side}_started_total"] = GRPC
    COUNTERS[f"grpc_{side}_handled_total"] = GRPC | {"grpc_code"}
    COUNTERS[f"grpc_{side}_msg_received_total"] = GRPC
    COUNTERS[f"grpc_{side}_msg_sent_total"] = GRPC
    HISTOGRAMS[f"grpc_{side}_handling_seconds"] = GRPC
# The values the contract fixes for some labels.
VALUES = {
    "grpc_type": {"unary", "client_stream", "server_stream", "bidi_stream"},
    "outcome": {"ok", "invalid", "rejected", "error"},
    "state": {"in_use", "idle", "none", "building", "ready"},
    "stage": {"exact", "fast", "candidates", "bound_scan", "rerank", "ingest_write"},
    "status": {"created", "updated", "unchanged", "failed"},
}
# What Prometheus adds to every series of a PodMonitor's targets.
TARGET_LABELS = frozenset({"namespace", "pod", "job", "container", "endpoint", "instance"})


def series_labels() -> dict[str, frozenset[str]]:
    """Every series name a query may select, and the labels it carries."""
    series = {name: labels | TARGET_LABELS for name, labels in {**COUNTERS, **GAUGES}.items()}
    for name, labels in HISTOGRAMS.items():
        series[f"{name}_bucket"] = labels | TARGET_LABELS | {"le"}
        series[f"{name}_sum"] = labels | TARGET_LABELS
        series[f"{name}_count"] = labels | TARGET_LABELS
    return series


SERIES = series_labels()
# Grafana's variables, as a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": "imagesearch"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(board: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def parse(expr: str) -> promql_parser.Expr:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return promql_parser.parse(expr)


def selectors(expr: promql_parser.Expr) -> list[tuple[str, promql_parser.VectorSelector]]:
    """Every vector selector under ``expr``, with its metric name (each has one)."""
    found: list[tuple[str, promql_parser.VectorSelector]] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name: {node}"
            found.append((node.name, node))
        return True

    promql_parser.walk(expr, pre_visit=visit)
    return found


def aggregations(expr: promql_parser.Expr) -> list[promql_parser.AggregateExpr]:
    found: list[promql_parser.AggregateExpr] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.AggregateExpr):
            found.append(node)
        return True

    promql_parser.walk(expr, pre_visit=visit)
    return found


def test_every_dashboard_query_parses_and_names_only_contract_metrics() -> None:
    queries = list(expressions(dashboard()))
    assert queries
    for title, expr in queries:
        tree = parse(expr)
        chosen = selectors(tree)
        assert chosen, f"{title}: {expr} selects no metric"
        for name, selector in chosen:
            assert name in SERIES, f"{title}: {name} is not a metric of the contract"
            for matcher in selector.matchers.matchers:
                assert matcher.name in SERIES[name], f"{title}: {name} has no label {matcher.name}"
                if matcher.name in VALUES and matcher.op in (
                    promql_parser.MatchOp.Equal,
                    promql_parser.MatchOp.NotEqual,
                ):
                    assert matcher.value in VALUES[matcher.name], f"{title}: {matcher.value}"
            # Two installs in one Prometheus: every query keeps to the chosen namespace.
            namespace = [m for m in selector.matchers.matchers if m.name == "namespace"]
            assert [(m.op, m.value) for m in namespace] == [
                (promql_parser.MatchOp.Equal, GRAFANA_VARIABLES["$namespace"])
            ], f"{title}: {name} is not filtered by $namespace"
        # An aggregation groups only by labels that every series under it carries.
        for aggregation in aggregations(tree):
            modifier = aggregation.modifier
            if modifier is None:
                continue
            for name, _ in selectors(aggregation.expr):
                missing = set(modifier.labels) - SERIES[name]
                assert not missing, f"{title}: {name} has no label {sorted(missing)}"


def test_dashboard_shows_every_metric_of_the_contract() -> None:
    shown = {name for _, expr in expressions(dashboard()) for name, _ in selectors(parse(expr))}
    families = set()
    for name in shown:
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        families.add(family if family in HISTOGRAMS else name)
    # The runtime collectors' minor series need no panel; CPU and memory do.
    wanted = {
        n for n in (*COUNTERS, *GAUGES, *HISTOGRAMS) if not n.startswith(("process_", "python_"))
    }
    wanted |= {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    assert wanted <= families, f"no panel for {sorted(wanted - families)}"
    # Request rate, errors and both latency quantiles, by method with grpc_type.
    exprs = [expr for _, expr in expressions(dashboard())]
    for needle in ("0.5, sum by (le, job, grpc_method, grpc_type)", "0.99, sum by (le, job, "):
        assert any(needle in e and "grpc_server_handling_seconds_bucket" in e for e in exprs)
    assert any('grpc_code!="OK"' in e for e in exprs)


def test_dashboard_is_portable_grafana_json() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # The namespace choices come from a series every server exports.
    namespaces = re.fullmatch(
        r"label_values\((\w+), namespace\)", variables["namespace"]["query"]["query"]
    )
    assert namespaces
    assert namespaces.group(1) in SERIES
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        # The data source the viewer picks, not one of this author's Grafana.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_monitoring_renders_validates_and_ships_the_dashboard(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered[MONITORING]
    # The PodMonitor is a custom resource too: its fields are checked below.
    custom = {*CUSTOM_RESOURCES, ("monitoring.coreos.com/v1", "PodMonitor")}
    for o in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                assert (o["apiVersion"], o["kind"]) in custom, o["kind"]
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{o['kind']}/{o['metadata']['name']}: {error.message}")
    config_map = one(objects, "ConfigMap", "imagesearch-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    [(key, text)] = config_map["data"].items()
    assert key.endswith(".json")
    assert json.loads(text) == dashboard()


def selects_expression(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a PodMonitor's label selector selects labels."""
    matched = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        matched = matched and labels.get(expression["key"]) in expression["values"]
    return matched


def test_pod_monitor_scrapes_both_servers_metrics_port(rendered: dict[str, Objects]) -> None:
    objects = rendered[MONITORING]
    [monitor] = find(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "podMetricsEndpoints", "namespaceSelector"}
    [endpoint] = spec["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    jobs = set()
    for deployment in ("extractor", "search"):
        template = one(objects, "Deployment", deployment)["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert selects_expression(spec["selector"], labels), deployment
        settings = server_settings(objects, deployment)
        container = template["spec"]["containers"][0]
        # The port it scrapes is the one the server serves /metrics on.
        assert port_named(container, endpoint["port"]) == settings.metrics_port
        # And a policy lets a namespace's pods (Prometheus's) reach that port.
        peers = [
            peer
            for policy in policies_for(objects, labels)
            for peer in peers_allowed(policy, settings.metrics_port)
        ]
        assert any("namespaceSelector" in peer for peer in peers), deployment
        jobs.add(labels[spec["jobLabel"]])
    # The dashboard tells the services apart by job.
    assert jobs == {"extractor", "search"}


@pytest.mark.parametrize("name", ALL)
def test_overlays_need_no_prometheus_operator(rendered: dict[str, Objects], name: str) -> None:
    assert not [o for o in rendered[name] if o["apiVersion"].startswith("monitoring.coreos.com")]


def adapter_rule() -> dict[str, Any]:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert values["rules"]["default"] is False  # only what the HPA reads
    [rule] = values["rules"]["custom"]
    assert isinstance(rule, dict)
    return rule


def test_gpu_hpa_scales_on_the_queue_the_adapter_serves(rendered: dict[str, Objects]) -> None:
    objects = rendered["gpu"]
    hpa = one(objects, "HorizontalPodAutoscaler", "extractor")
    [queue] = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    rule = adapter_rule()
    # The adapter serves the series under the name the HPA asks for.
    series = parse(rule["seriesQuery"])
    [(name, _)] = selectors(series)
    assert name == "extractor_queue_depth"
    assert re.fullmatch(rule["name"]["matches"], name)
    assert rule["name"]["as"] == queue["metric"]["name"]
    # Tied to pods by the labels Prometheus gives a PodMonitor's targets.
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    # The query the adapter builds from the template is PromQL about that gauge only.
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", name)
        .replace("<<.LabelMatchers>>", 'namespace="imagesearch",pod=~"extractor-.*"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert "<<" not in query
    assert {n for n, _ in selectors(parse(query))} == {"extractor_queue_depth"}
    # Scale before pods reject (the queue's bound), not on a partly filled batch.
    settings = server_settings(objects, "extractor")
    assert isinstance(settings, ExtractorSettings)
    target = queue["target"]
    assert target["type"] == "AverageValue"
    assert settings.max_batch_size <= int(target["averageValue"]) < settings.max_queue_images
