"""Prometheus and Grafana as clients of /metrics: docs/grafana/vllama.json and
docs/prometheus/alerts.yml parse, and every metric they query is one a real gateway exports
(`vllama serve` supervising the fake engine as a real child, scraped after real requests),
with the labels it really carries. The alert rules, and the dashboard's queries as recording
rules, pass `promtool check rules` where promtool is installed or $VLLAMA_TEST_PROMTOOL names
it (scripts/test unpacks one from Debian's prometheus package); a schema check always runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.clients.conftest import _stop, _wait_http, spawn
from tests.conftest import REPO_ROOT, free_port

DASHBOARD = REPO_ROOT / "docs" / "grafana" / "vllama.json"
ALERTS = REPO_ROOT / "docs" / "prometheus" / "alerts.yml"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})
PROMQL_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right",
                          "bool", "offset", "and", "or", "unless", "inf", "nan"})
# What each must show, by the metric that shows it.
DASHBOARD_NEEDS = {
    "requests": "vllama_requests_total",
    "latency percentiles": "vllama_request_duration_seconds_bucket",
    "tokens/s": "vllama_tokens_total",
    "engine states": "vllama_engine_state",
    "engine restarts": "vllama_engine_restarts_total",
    "queue depth": "vllama_queue_depth",
    "GPU memory per GPU": "vllama_gpu_memory_used_bytes",
}
ALERTS_NEED = {
    "engine down": "vllama_engine_state",
    "restart loop": "vllama_engine_restarts_total",
    "GPU memory near full": "vllama_gpu_memory_used_bytes",
    "queue growing": "vllama_queue_depth",
}


@dataclass
class Family:
    kind: str
    labels: set[str]  # label names seen on its samples (le excluded)


def parse_exposition(text: str) -> dict[str, Family]:
    """Metric name -> family, histograms also under their _bucket/_sum/_count names."""
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            family = Family(kind, set())
            families[name] = family
            if kind == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    families[name + suffix] = family
        elif line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            name, _, labels = series.partition("{")
            names = set(re.findall(r'(\w+)="', labels)) - {"le"}
            families[name].labels |= names
    return families


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """The metric names an expression reads, with the label names each selector matches on.
    Enough PromQL for our files: strings, ranges, grouping clauses and functions are told
    apart from metric names."""
    found: list[tuple[str, set[str]]] = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        found.append((match[1], set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", match[2]))))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", bare):
        name, call = match[1], match[2]
        if call or name.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        if all(name != seen for seen, _ in found):
            found.append((name, set()))
    return found


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in doc["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in inner.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"]
            inner_match = re.fullmatch(r"label_values\((.*), \w+\)", query)
            exprs.append(inner_match[1] if inner_match else query)
    return exprs


def alert_rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Family]]:
    """/metrics of `vllama serve` with one supervised (fake) engine, after a few requests."""
    tmp = tmp_path_factory.mktemp("metrics")
    cfg = tmp / "config.toml"
    cfg.write_text(f'vllm_command = "{sys.executable} -m tests.fake_vllm"\n'
                   'health_poll_interval = 0.2\nstop_timeout = 5\n\n'
                   '[[models]]\nname = "fake"\nsource = "/models/fake"\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    proc = spawn([sys.executable, "-m", "vllama", "serve", "--config", str(cfg),
                  "--port", str(port)], tmp / "vllama.log", env)
    try:
        _wait_http(url + "/health", proc, tmp / "vllama.log")
        for body in ({"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
                     {"model": "nope", "messages": []}):
            req = urllib.request.Request(url + "/api/chat", data=json.dumps(body).encode())
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                assert exc.code == 404
        with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
            yield parse_exposition(resp.read().decode())
    finally:
        _stop(proc)


def check_exprs(exprs: list[str], families: dict[str, Family]) -> set[str]:
    """Every metric is known and every label it is matched on is one it carries; returns
    the metric names used."""
    used: set[str] = set()
    assert exprs
    for expr in exprs:
        reads = selectors(expr)
        assert reads, expr
        for name, labels in reads:
            assert name in families, f"{name} is not exported by /metrics (in {expr!r})"
            family = families[name]
            if family.labels:  # seen with samples: its label names are known
                assert labels <= family.labels | TARGET_LABELS, (name, labels, expr)
            used.add(name)
    return used


def test_the_scrape_covers_every_family(exported: dict[str, Family]) -> None:
    for name in ("vllama_requests_total", "vllama_request_duration_seconds_bucket",
                 "vllama_time_to_first_token_seconds_bucket", "vllama_tokens_total",
                 "vllama_requests_in_flight", "vllama_engine_state",
                 "vllama_engine_restarts_total", "vllama_gpu_memory_used_bytes",
                 "vllama_gpu_memory_total_bytes"):
        assert name in exported, name
    assert exported["vllama_engine_state"].labels == {"model", "state"}
    assert exported["vllama_requests_total"].labels == {"route", "method", "status", "model"}


def test_dashboard_queries_only_exported_metrics(exported: dict[str, Family]) -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names[0] == "datasource" and {"instance", "model"} <= set(names)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert {"type", "title", "gridPos"} <= panel.keys(), panel
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    used = check_exprs(dashboard_exprs(doc), exported)
    missing = {what: m for what, m in DASHBOARD_NEEDS.items() if m not in used}
    assert not missing, f"the dashboard shows no {missing}"


def test_alert_rules_schema_and_metrics(exported: dict[str, Family]) -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names))
    rules = alert_rules(doc)
    alerts = [r["alert"] for r in rules]
    assert len(alerts) == len(set(alerts)) and all(re.fullmatch(r"[A-Z]\w+", a) for a in alerts)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                             "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "description"} <= rule["annotations"].keys()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
    used = check_exprs([r["expr"] for r in rules], exported)
    missing = {what: m for what, m in ALERTS_NEED.items() if m not in used}
    assert not missing, f"no alert on {missing}"


def promtool() -> str | None:
    return os.environ.get("VLLAMA_TEST_PROMTOOL") or shutil.which("promtool")


@pytest.mark.skipif(promtool() is None, reason="promtool is not installed (optional)")
def test_promtool_accepts_the_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    tool = promtool()
    assert tool is not None
    check = [tool, "check", "rules", str(ALERTS)]
    out = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # The dashboard's queries, with Grafana's variables filled in, as recording rules: the
    # same PromQL parser checks them.
    exprs = [re.sub(r"\$__rate_interval", "5m", e).replace("$instance", ".*")
             .replace("$model", ".*") for e in dashboard_exprs(json.loads(DASHBOARD.read_text()))]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"vllama:dashboard_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
