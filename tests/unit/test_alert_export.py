"""`shipway alerts export`: a valid Prometheus alerting-rules file over metrics that exist.

With `promtool` on the PATH (Debian's `prometheus` package) the file is checked by it and
its PromQL is run against synthetic series (`promtool test rules`); without it, a JSON
schema and a minimal expression check stand in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shipway.telemetry.metrics import Metrics

_LABEL = {
    "type": "object",
    "propertyNames": {"pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
    "additionalProperties": {"type": "string"},
}
RULES_SCHEMA = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["alert", "expr"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "minLength": 1},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                                "labels": _LABEL,
                                "annotations": _LABEL,
                            },
                        },
                    },
                },
            },
        }
    },
}

CONFIG = {
    "embedded_models": False,
    "models": {
        "a": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "b": {
            "backend": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "queue": {"max_waiting": 8},
        },
    },
    "alerts": {
        "rules": [
            {"name": "spend", "kind": "cost_rate", "threshold_per_hour": 5},
            {
                "name": "gpt-4.1_slow",
                "kind": "latency",
                "threshold_s": 2,
                "quantile": 0.99,
                "models": ["gpt-4.1", 'we"ird'],
            },
        ]
    },
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # A subprocess, as a user runs it: in-process, the CLI would point structlog at a
    # captured stream that is closed afterwards, breaking every later test that logs.
    return subprocess.run(
        [sys.executable, "-m", "shipway", *args], capture_output=True, text=True, timeout=60
    )


def export(tmp_path: Path, config: dict[str, Any] | None = CONFIG) -> tuple[Path, dict[str, Any]]:
    args = ["alerts", "export", "--output", str(tmp_path / "rules.yml")]
    if config is not None:
        (tmp_path / "shipway.yaml").write_text(yaml.safe_dump(config))
        args += ["--config", str(tmp_path / "shipway.yaml")]
    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return tmp_path / "rules.yml", yaml.safe_load((tmp_path / "rules.yml").read_text())


def test_stdout_carries_only_the_rules() -> None:
    result = _cli("alerts", "export")
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    names = [rule["alert"] for rule in document["groups"][0]["rules"]]
    assert names == [
        "latency_p95",
        "latency_p99",
        "error_rate",
        "model_unavailable",
        "queue_saturation",
    ]


def test_the_file_matches_the_prometheus_rules_schema(tmp_path: Path) -> None:
    _, document = export(tmp_path)
    jsonschema.validate(document, RULES_SCHEMA)
    rules = {rule["alert"]: rule for rule in document["groups"][0]["rules"]}
    assert set(rules) >= {"error_rate", "model_unavailable", "spend", "gpt-4.1_slow"}
    assert rules["error_rate"]["for"] == "1m"
    assert rules["error_rate"]["labels"] == {"severity": "critical", "kind": "error_rate"}
    assert "for" not in rules["spend"]
    assert 'model=~"gpt-4\\\\.1|we\\"ird"' in rules["gpt-4.1_slow"]["expr"]
    # Each model's own queue limit: b waits 8, a the default 64.
    assert rules["queue_saturation"]["expr"] == (
        '(shipway_queue_depth{model!="(unknown)",model=~"b"} / 8 >= 0.9) or '
        '(shipway_queue_depth{model!="(unknown)",model=~"a"} / 64 >= 0.9)'
    )
    exposed = _exposed_metric_names()
    for rule in rules.values():
        _check_expression(rule["expr"], exposed)


def test_disabled_alerts_export_an_empty_group(tmp_path: Path) -> None:
    _, document = export(tmp_path, {"alerts": {"enabled": False}})
    assert document["groups"][0]["rules"] == []


def _exposed_metric_names() -> set[str]:
    metrics = Metrics()
    metrics.watch_engine(lambda: {"a.ready": 1.0, "a.busy": 0.0, "a.slots": 1.0}, lambda: {})
    call = metrics.for_call("a", "chat")
    call.finished(200)
    call.latency.observe(0.1)
    call.cost.inc(1)
    metrics.queue_depth.labels("a").set(0)
    text = metrics.render().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def _check_expression(expr: str, exposed: set[str]) -> None:
    """Balanced brackets outside string literals, and only metrics Shipway exposes."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    assert '"' not in without_strings.replace('""', ""), f"unclosed string in {expr}"
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in without_strings:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            assert depth[closing[char]] >= 0, f"unbalanced {char} in {expr}"
    assert not any(depth.values()), f"unbalanced brackets in {expr}"
    for name in re.findall(r"\bshipway_[a-z_]+", without_strings):
        assert name in exposed, f"{name} is not a metric Shipway exposes"


promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed")


@needs_promtool
def test_promtool_accepts_the_file(tmp_path: Path) -> None:
    path, _ = export(tmp_path)
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


PROMTOOL_TEST = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # a: a 10% baseline, so 20% now is within its noise (threshold 30%)
      - series: 'shipway_requests_total{model="a",endpoint="chat",status="200"}'
        values: '0+90x120'
      - series: 'shipway_requests_total{model="a",endpoint="chat",status="502"}'
        values: '0+10x90 910+25x30'
      # b: failing half the time for long: the ceiling (50%) still fires at 66%
      - series: 'shipway_requests_total{model="b",endpoint="chat",status="200"}'
        values: '0+50x120'
      - series: 'shipway_requests_total{model="b",endpoint="chat",status="500"}'
        values: '0+50x90 4550+100x30'
      # clients hanging up (499) are not errors
      - series: 'shipway_requests_total{model="a",endpoint="chat",status="499"}'
        values: '0+500x120'
      - series: 'shipway_model_ready{model="a"}'
        values: '1x100 0x20'
      - series: 'shipway_queue_depth{model="b"}'
        values: '0x100 8x20'
    alert_rule_test:
      - eval_time: 110m
        alertname: error_rate
        exp_alerts:
          - exp_labels: {severity: critical, kind: error_rate, model: b}
            exp_annotations:
              summary: 'error rate of b is 66.67% over 5m'
              description: 'Shipway alert rule `error_rate` (error_rate).'
      - eval_time: 110m
        alertname: model_unavailable
        exp_alerts:
          - exp_labels: {severity: critical, kind: model_unavailable, model: a}
            exp_annotations:
              summary: 'model a is not ready: no worker has it loaded (see /readyz)'
              description: 'Shipway alert rule `model_unavailable` (model_unavailable).'
      - eval_time: 110m
        alertname: queue_saturation
        exp_alerts:
          - exp_labels: {severity: warning, kind: queue_saturation, model: b}
            exp_annotations:
              summary: 'queue of b is 100% full'
              description: 'Shipway alert rule `queue_saturation` (queue_saturation).'
"""


@needs_promtool
def test_promtool_runs_the_rules_over_synthetic_series(tmp_path: Path) -> None:
    export(tmp_path)
    (tmp_path / "test.yml").write_text(PROMTOOL_TEST)
    ran = subprocess.run(
        [str(promtool), "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
