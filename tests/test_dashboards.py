"""The Grafana dashboard and the Prometheus alerts speak only the agent's metric names.

METRICS is the contract agent/metrics.py exports (names as scraped: counters with _total).
A later test against a live agent's /metrics can replace the constant; until then a renamed
metric fails here instead of as an empty panel in production.  promtool (Debian package
"prometheus") checks and unit-tests the alert rules, and parses every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "grafana-vsim-agent.json"
ALERTS = ROOT / "dashboards" / "alerts.yml"
ALERT_TESTS = ROOT / "dashboards" / "alerts.test.yml"

HISTOGRAMS = {"vsim_delivery_latency_seconds", "vsim_hub_request_duration_seconds"}
METRICS = HISTOGRAMS | {
    "vsim_agent_info",
    "vsim_agent_start_time_seconds",
    "vsim_sim_state",
    "vsim_sim_signal_dbm",
    "vsim_sim_sms_received_total",
    "vsim_sim_last_sms_timestamp_seconds",
    "vsim_device_up",
    "vsim_device_reconnects_total",
    "vsim_device_hang_steps_total",
    "vsim_device_errors_total",
    "vsim_device_storage_used_messages",
    "vsim_device_storage_total_messages",
    "vsim_sms_parts_received_total",
    "vsim_reassembly_pending_parts",
    "vsim_messages_partial_total",
    "vsim_outbox_depth_messages",
    "vsim_outbox_oldest_age_seconds",
    "vsim_messages_delivered_total",
    "vsim_outbox_retries_total",
    "vsim_dead_letters_messages",
    "vsim_messages_dead_lettered_total",
    "vsim_hub_auth_failure",
    "vsim_hub_errors_total",
    "vsim_commands_total",
    "vsim_store_writable",
    "vsim_store_write_errors_total",
    "vsim_store_incidents",
}
# Grafana variables, replaced by typical values so promtool can parse the queries.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*", "$device": ".*"}

promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH (Debian: apt-get install prometheus)",
)


def metric_names(expr: str) -> set[str]:
    """vsim_ metric names in a PromQL expression, histogram series mapped to the histogram."""
    names = set()
    for name in re.findall(r"\bvsim_[a-z_]+", expr):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "vsim-agent"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"instance", "device"} <= variables.keys()
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_every_panel_has_datasource_and_targets(dashboard: dict[str, Any]) -> None:
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    graphs = [p for p in panels(dashboard) if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["datasource"] == ds, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ds, panel["title"]
            assert target["expr"].strip(), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_uses_only_exported_metrics_and_all_of_them(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(e) for e in queries(dashboard)))
    assert used - METRICS == set(), "not exported by the agent"
    assert METRICS - used == set(), "exported but on no panel"


def test_alerts_use_only_exported_metrics() -> None:
    used = metric_names(ALERTS.read_text())
    assert used <= METRICS, used - METRICS
    for alert in (
        "VsimAgentDown",
        "VsimQueueStale",
        "VsimHubAuthFailure",
        "VsimDeviceDown",
        "VsimSimStorageHigh",
        "VsimStoreCannotWrite",
        "VsimStoreDamaged",
    ):
        assert f"alert: {alert}\n" in ALERTS.read_text()


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(vsim_delivery_latency_seconds_bucket[5m])))"
        " / vsim_outbox_depth_messages + vsim_messages_delivered_total"
    )
    assert metric_names(expr) == {
        "vsim_delivery_latency_seconds",
        "vsim_outbox_depth_messages",
        "vsim_messages_delivered_total",
    }


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


@promtool
def test_promtool_check_rules() -> None:
    run = _promtool("check", "rules", str(ALERTS))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 9 rules found" in run.stdout


@promtool
def test_promtool_alert_unit_tests() -> None:
    run = _promtool("test", "rules", str(ALERT_TESTS))
    assert run.returncode == 0, run.stdout + run.stderr


@promtool
def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each panel query becomes a recording rule, so promtool's PromQL parser checks it."""
    rules = []
    for i, expr in enumerate(queries(dashboard)):
        if expr.startswith("label_values("):  # Grafana's function, not PromQL: check its inside
            expr = re.sub(r"^label_values\((.*), *\w+\)$", r"\1", expr)
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    run = _promtool("check", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules)} rules found" in run.stdout
