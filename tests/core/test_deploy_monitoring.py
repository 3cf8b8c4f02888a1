"""deploy/monitoring: the alert rules (promtool) and the dashboard ask only for series mirrord exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mirrord.engine.monitor import NodeMetrics, _advance

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "mirrord-alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus; .ci/run installs it)")


def exported_names() -> set[str]:
    """Every sample name a node's registry can export (counters with _total, histograms with _bucket...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in NodeMetrics("n").registry.collect() for suffix in suffixes[family.type]}


def names_in(text: str) -> set[str]:
    return set(re.findall(r"\bmirrord_[a-z_]+", text))


def test_rules_and_dashboard_ask_only_for_exported_series():
    exported = exported_names()
    for path in (RULES, DASHBOARD):
        used = names_in(path.read_text())
        assert used and used <= exported, f"{path.name} asks for series mirrord does not export: {sorted(used - exported)}"


def test_dashboard_is_grafana_json_with_a_panel_per_alert():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for alert_id in "1234":
        assert f'alert_id="{alert_id}"' in exprs
    assert "histogram_quantile(0.99" in exprs and "rate(mirrord_commits_total" in exprs


@needs_promtool
def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


UNIT_TEST = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'mirrord_send_queue_bytes{{node="a", database="shop"}}'
        values: '1000 5000 5000'
      - series: 'mirrord_alert_threshold{{node="a", database="shop", alert_id="2"}}'
        values: '4096 4096 4096'
      - series: 'mirrord_redo_queue_bytes{{node="a", database="shop"}}'
        values: '9999999 9999999 9999999'
      - series: 'mirrord_mirror_commit_overhead_seconds{{node="a", database="shop"}}'
        values: '0.002 0.002 0.002'
      - series: 'mirrord_alert_threshold{{node="a", database="shop", alert_id="4"}}'
        values: '0.005 0.005 0.005'
    alert_rule_test:
      - eval_time: 0s
        alertname: MirrordUnsentLog
        exp_alerts: []
      - eval_time: 15s
        alertname: MirrordUnsentLog
        exp_alerts:
          - exp_labels: {{severity: warning, alert_id: "2", node: a, database: shop}}
            exp_annotations:
              summary: "shop on a: unsent log over its threshold (alert 2)"
              description: "4.883kiB of log has not been hardened by the mirror."
      - eval_time: 15s
        alertname: MirrordUnrestoredLog
        exp_alerts: []
      - eval_time: 15s
        alertname: MirrordMirrorCommitOverhead
        exp_alerts: []
"""


@needs_promtool
def test_promtool_unit_test_of_the_rules(tmp_path):
    """A figure over the DBA's threshold fires; no threshold set, or under it, stays quiet."""
    spec = tmp_path / "alerts-test.yml"
    spec.write_text(UNIT_TEST.format(rules=json.dumps(str(RULES))))
    done = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_thresholds_are_exported_in_base_units():
    metrics = NodeMetrics("a")
    metrics._export_thresholds("shop", ((1, 2, True), (2, 4, True), (3, 7, True), (4, 50, False)))
    text = generate_latest(metrics.registry).decode()
    assert 'mirrord_alert_threshold{alert_id="1",database="shop",node="a"} 120.0' in text  # minutes -> seconds
    assert 'mirrord_alert_threshold{alert_id="2",database="shop",node="a"} 4096.0' in text  # KB -> bytes
    assert 'alert_id="4"' not in text  # disabled: no threshold, no alert
    metrics._export_thresholds("shop", ((1, 2, True),))
    assert 'alert_id="2"' not in generate_latest(metrics.registry).decode()  # dropped


def test_counters_advance_by_what_their_source_gained():
    exported: dict = {}
    assert [_advance(exported, "x", v) for v in (5, 5, 9, 2, 3)] == [5, 0, 4, 2, 1]  # 2: the source restarted from 0


def test_commit_series_are_kept_per_database_and_a_database_made_again_is_exported_anew():
    metrics = NodeMetrics("a")
    metrics.observe_commit("shop", 0.002)
    metrics.observe_commit("shop", 0.004)
    text = generate_latest(metrics.registry).decode()
    assert 'mirrord_commits_total{database="shop",node="a"} 2.0' in text
    metrics._known.add("shop")
    metrics.forget_missing(set())  # DROP DATABASE shop
    assert 'database="shop"' not in generate_latest(metrics.registry).decode()
    metrics.observe_commit("shop", 0.001)  # CREATE DATABASE shop again
    assert 'mirrord_commits_total{database="shop",node="a"} 1.0' in generate_latest(metrics.registry).decode()
