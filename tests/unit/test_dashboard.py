"""The Grafana dashboard (deploy/grafana/drivestream.json) queries only metrics serve exports:
every query is parsed as PromQL (promql-parser) and its selectors' names are checked against
a real ServeMetrics registry rendered in-process, as /metrics serves it, not against a list
kept by hand. Its docker-compose provisioning points at those files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from inference.metrics import ServeMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "drivestream.json").read_text())

# What each Prometheus metric type exposes besides (or instead of) its family name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# Grafana fills these in before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "30m"}
GRAFANA_VARIABLES |= {"$instance": ".*"}


def exported() -> set[str]:
    """Every series name serve's /metrics can carry (families without samples yet too)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(ServeMetrics().render().decode()):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a Grafana PromQL query selects, from its syntax tree (so it must parse)."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.add(node.name)
        elif isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                walk(arg)
        elif hasattr(node, "expr"):  # aggregations, parens, unary minus, subqueries
            walk(node.expr)

    walk(promql_parser.parse(expr))
    return names


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[str]:
    exprs = [t["expr"] for p in panels(DASHBOARD["panels"]) for t in p.get("targets", [])]
    for var in DASHBOARD["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert match, f"variable {var['name']}: unexpected query {query!r}"
            exprs.append(match.group(1))
    return exprs


def test_metric_names_come_from_selectors_only():
    expr = (
        'sum by (reason) (rate(a_total{instance=~"$instance", x="b_c"}[$__rate_interval]))'
        " / on() group_left() histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) * 100"
        " - max(delta(g[1h])) + -(scalar(c))"
    )
    assert metric_names(expr) == {"a_total", "h_bucket", "g", "c"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(a_total[5m])")  # not PromQL: the dashboard would show an error


def test_every_queried_metric_is_exported_by_serve():
    names = exported()
    assert "drivestream_inference_stage_seconds_bucket" in names  # the family as served
    assert "drivestream_inference_fallbacks_total" in names  # labelled, no sample yet
    used: set[str] = set()
    for expr in queries():
        found = metric_names(expr)
        assert found, f"no metric in {expr!r}"
        missing = found - names
        assert not missing, f"{expr!r} queries {missing}, which serve does not export"
        used |= found
    # the panels: latency by stage, fallback share by reason, model version and
    # swap outcomes, consumer lag, trainer freshness (model versions reaching serve)
    for needed in (
        "drivestream_inference_stage_seconds_bucket",
        "drivestream_inference_fallbacks_total",
        "drivestream_inference_predictions_total",
        "drivestream_inference_model_version",
        "drivestream_inference_swaps_total",
        "drivestream_inference_consumer_lag",
    ):
        assert needed in used, f"no panel shows {needed}"


def test_panels_are_wired_to_the_datasource_variable():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(DASHBOARD["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> repository file for the read-only bind mounts of a service."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{source} is mounted but missing"
            out[target] = source
    return out


def test_compose_provisions_the_dashboard_from_serves_metrics(compose):
    services = compose["services"]
    grafana = mounts(services["grafana"])
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    dashboards = yaml.safe_load((provisioning / "dashboards" / "drivestream.yml").read_text())
    path = dashboards["providers"][0]["options"]["path"]
    assert grafana[f"{path}/drivestream.json"] == "./deploy/grafana/drivestream.json"

    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    (prom_ds,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prom_ds["url"] == "http://prometheus:9090" and prom_ds["isDefault"]

    prometheus = mounts(services["prometheus"])
    config = yaml.safe_load((ROOT / prometheus["/etc/prometheus/prometheus.yml"]).read_text())
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    port = services["inference"]["environment"]["DRIVESTREAM_METRICS_PORT"]
    assert f"inference:{port}" in targets
    assert services["inference"]["environment"]["DRIVESTREAM_METRICS_HOST"] == "0.0.0.0"
