"""Monitoring assets (alert rules, their promtool tests, the Grafana dashboard), write_monitoring and the CLI."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import re
import shutil
import subprocess
import sys
import textwrap
from importlib import resources

import ferrolab as fl
import numpy as np
import pytest
import yaml
from conftest import MISSING
from ferrolab import cli, health, monitoring

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=MISSING + "promtool (Debian package prometheus)")

SUBPROCESS_TIMEOUT = 120

# The series ferrolab exports (API.md); histograms also have their _bucket/_sum/_count series.
SERIES = {
    "ferrolab_operations_total",
    "ferrolab_errors_total",
    "ferrolab_memory_usage_bytes",
    "ferrolab_memory_total_bytes",
    "ferrolab_cpu_usage_percent",
    "ferrolab_gpu_memory_usage_bytes",
    "ferrolab_gpu_memory_total_bytes",
    "ferrolab_circuit_breaker_state",
    "ferrolab_circuit_breaker_calls_total",
    "ferrolab_circuit_breaker_transitions_total",
    "ferrolab_backup_last_success_timestamp_seconds",
    "ferrolab_backup_bytes_total",
    # pushed by the pytest plugin's --ops-push (not in the process's own exposition)
    "ferrolab_ops_check_success",
    "ferrolab_ops_last_run_timestamp_seconds",
}
HISTOGRAMS = {"ferrolab_operation_duration_seconds", "ferrolab_backup_duration_seconds"}
# Prometheus's own per-target series, used by the target-down alerts
PROMETHEUS_SERIES = {"up"}
# counters and histograms made with fl.metrics (the backup series) also write prometheus_client's `_created`
# samples (off with PROMETHEUS_DISABLE_CREATED_SERIES); no rule or panel uses them
CREATED = {n.removesuffix("_total") + "_created" for n in SERIES if n.endswith("_total")} | {
    h + "_created" for h in HISTOGRAMS
}
ALLOWED = SERIES | PROMETHEUS_SERIES | CREATED | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

ALERTS = {
    "FerrolabTargetDown",
    "FerrolabTargetsMissing",
    "FerrolabHighErrorRate",
    "FerrolabHighLatencyP95",
    "FerrolabProcessMemoryHigh",
    "FerrolabGPUMemoryHigh",
    "FerrolabCircuitBreakerOpen",
    "FerrolabCircuitBreakerForcedOpen",
    "FerrolabCircuitBreakerFlapping",
    "FerrolabBackupStale",
    "FerrolabBackupMetricsMissing",
    "FerrolabOpsCheckFailed",
    "FerrolabOpsChecksNotRunning",
}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "Inf",
    "NaN",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels or numbers."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", s)  # numbers
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if m.group() in PROMQL_KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue  # keyword, or a function / aggregation call
        names.add(m.group())
    return names


def test_metric_names_parser():
    assert metric_names('sum by (job, le) (rate(foo_bucket{a="x{y}", b=~"$v"}[5m])) / on(job) bar > 1e3') == {
        "foo_bucket",
        "bar",
    }
    assert metric_names("histogram_quantile(0.95, x) and time() - y offset 5m") == {"x", "y"}
    assert metric_names('{__name__=~"ferrolab_.+"}') == set()


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(monitoring.alert_rules())["groups"] for r in g["rules"]]


def dashboard_panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels of collapsed rows
    return out


def dashboard_exprs(d: dict) -> list[str]:
    return [t["expr"] for p in dashboard_panels(d) for t in p.get("targets", [])]


def substitute_grafana_variables(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False
    )


def test_series_names_match_the_exposition():
    # the names and labels the rules and the dashboard rely on, as the native registry exports them today
    # (breaker, backup and GPU series come with their modules)
    fl.ops.sum(np.ones(4))
    with pytest.raises(ValueError):
        fl.ops.dot(np.ones(3), np.ones(4))
    text = fl.metrics.exposition()
    exported = set(re.findall(r"^(ferrolab_\w+)", text, re.M))
    assert exported <= ALLOWED, exported - ALLOWED
    assert exported >= {
        "ferrolab_operations_total",
        "ferrolab_operation_duration_seconds_bucket",
        "ferrolab_errors_total",
        "ferrolab_memory_usage_bytes",
        "ferrolab_memory_total_bytes",
        "ferrolab_cpu_usage_percent",
    }
    assert re.search(
        r'^ferrolab_operations_total\{(?=.*operation="dot")(?=.*device="cpu")(?=.*status="error").*\} ', text, re.M
    )
    assert re.search(r'^ferrolab_operations_total\{(?=.*operation="sum")(?=.*status="success").*\} ', text, re.M)
    assert re.search(r'^ferrolab_errors_total\{(?=.*operation="dot")(?=.*error_type=").*\} ', text, re.M)
    assert re.search(
        r'^ferrolab_operation_duration_seconds_bucket\{(?=.*operation="sum")(?=.*device=")(?=.*le=")', text, re.M
    )


# --- package data ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [monitoring.ALERT_RULES_FILE, monitoring.ALERT_TESTS_FILE, monitoring.DASHBOARD_FILE])
def test_assets_are_package_data(name):
    f = resources.files("ferrolab").joinpath("assets", name)
    assert f.is_file()
    assert f.read_text(encoding="utf-8").strip()


def test_accessors_return_the_assets():
    assert monitoring.alert_rules().startswith("#")
    assert yaml.safe_load(monitoring.alert_rule_tests())["rule_files"] == [monitoring.ALERT_RULES_FILE]
    d = monitoring.grafana_dashboard()
    d["title"] = "changed"
    assert monitoring.grafana_dashboard()["title"] == "ferrolab"  # a fresh copy every time


# --- alert rules ----------------------------------------------------------------------------------------------------


def test_rules_shape_labels_and_annotations():
    rs = rules()
    names = [r["alert"] for r in rs]
    assert len(names) == len(set(names))
    assert set(names) == ALERTS
    for r in rs:
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
        assert set(r["annotations"]) >= {"summary", "description"}, r["alert"]
        assert "{{ $labels." in r["annotations"]["summary"] + r["annotations"]["description"], r["alert"]


def test_rules_use_only_ferrolab_series():
    for r in rules():
        names = metric_names(r["expr"])
        assert names, r["alert"]
        assert names <= ALLOWED, (r["alert"], names - ALLOWED)


def test_rule_thresholds():
    by_name = {r["alert"]: r for r in rules()}
    assert by_name["FerrolabHighErrorRate"]["expr"].rstrip().endswith("> 0.05")
    assert by_name["FerrolabHighErrorRate"]["for"] == "5m"
    assert 'ferrolab_circuit_breaker_state{state="open"} == 1' in by_name["FerrolabCircuitBreakerOpen"]["expr"]
    assert by_name["FerrolabCircuitBreakerOpen"]["for"] == "1m"
    assert by_name["FerrolabCircuitBreakerForcedOpen"]["labels"]["severity"] == "info"
    assert "> 26 * 3600" in by_name["FerrolabBackupStale"]["expr"]
    assert by_name["FerrolabGPUMemoryHigh"]["expr"].endswith("> 0.9")
    assert by_name["FerrolabProcessMemoryHigh"]["expr"].endswith("> 0.9")
    assert by_name["FerrolabOpsCheckFailed"]["expr"].strip() == "ferrolab_ops_check_success == 0"
    assert "> 2 * 3600" in by_name["FerrolabOpsChecksNotRunning"]["expr"]


def seconds(duration: str) -> float:
    """A Prometheus duration ("1d3h", "90s", "250ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def unit_test_cases() -> list[tuple[str, float, bool]]:
    """(alertname, eval_time in seconds, expects alerts) of every case in the shipped unit tests."""
    tests = yaml.safe_load(monitoring.alert_rule_tests())["tests"]
    return [
        (case["alertname"], seconds(case["eval_time"]), bool(case.get("exp_alerts")))
        for t in tests
        for case in t.get("alert_rule_test", [])
    ]


def test_seconds():
    assert seconds("1d3h") == 97200 and seconds("30s") == 30 and seconds("250ms") == 0.25


def test_unit_tests_cover_every_alert_firing_and_not_firing():
    cases = unit_test_cases()
    fors = {r["alert"]: seconds(r.get("for", "0s")) for r in rules()}
    assert {name for name, _, fires in cases if fires} == ALERTS
    # quiet after the alert's `for` has passed: the expression, not only the pending period, keeps it quiet
    assert {name for name, t, fires in cases if not fires and t > fors[name]} == ALERTS


@needs_promtool
def test_promtool_check_rules(tmp_path):
    path = tmp_path / monitoring.ALERT_RULES_FILE
    path.write_text(monitoring.alert_rules(), encoding="utf-8")
    res = promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in res.stdout


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path):
    # the parse check above can fail: a syntax error in one expr is reported
    path = tmp_path / "broken.yml"
    path.write_text(monitoring.alert_rules().replace("> 0.05", "> > 0.05"), encoding="utf-8")
    assert promtool("check", "rules", str(path)).returncode != 0


@pytest.fixture(scope="module")
def unit_test_runs(tmp_path_factory):
    """``promtool test rules`` on the shipped rules and on a broken copy, run side by side (each takes seconds).

    In the broken copy every alert fires at once on a sample without labels (``expr: vector(1)``, no ``for``), so
    every case of the unit tests must fail: a case expecting alerts gets one with the wrong labels, a quiet case
    gets an alert.
    """
    base = tmp_path_factory.mktemp("promtool")
    shipped, broken = base / "shipped", base / "broken"
    monitoring.write_monitoring(shipped)
    doc = yaml.safe_load(monitoring.alert_rules())
    for g in doc["groups"]:
        for r in g["rules"]:
            r["expr"] = "vector(1)"
            r.pop("for", None)
            r.pop("annotations")  # (faster)
    broken.mkdir()
    (broken / monitoring.ALERT_RULES_FILE).write_text(yaml.safe_dump(doc), encoding="utf-8")
    (broken / monitoring.ALERT_TESTS_FILE).write_text(monitoring.alert_rule_tests(), encoding="utf-8")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = {
            k: pool.submit(promtool, "test", "rules", monitoring.ALERT_TESTS_FILE, cwd=d)
            for k, d in (("shipped", shipped), ("broken", broken))
        }
        return {k: f.result() for k, f in runs.items()}


@needs_promtool
def test_promtool_test_rules(unit_test_runs):
    res = unit_test_runs["shipped"]
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_every_unit_test_case_can_fail(unit_test_runs):
    res = unit_test_runs["broken"]
    assert res.returncode != 0
    failed = {(name, seconds(t)) for name, t in re.findall(r"alertname: (\w+), time: (\w+),", res.stdout + res.stderr)}
    assert failed == {(name, t) for name, t, _ in unit_test_cases()}


# --- dashboard ------------------------------------------------------------------------------------------------------


def test_dashboard_structure():
    d = json.loads(resources.files("ferrolab").joinpath("assets", monitoring.DASHBOARD_FILE).read_text("utf-8"))
    assert d["schemaVersion"] >= 36
    assert d["uid"] == "ferrolab-overview" and d["title"] == "ferrolab"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    panels = dashboard_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cell & cells, f"panel {p['title']!r} overlaps another"
        cells |= cell
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert 'job=~"$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])


def test_dashboard_uses_only_ferrolab_series_and_covers_them():
    d = monitoring.grafana_dashboard()
    used = set()
    for expr in dashboard_exprs(d):
        names = metric_names(expr)
        assert names, expr
        assert names <= ALLOWED, (expr, names - ALLOWED)
        used |= names
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"])
            assert m, v["query"]
            assert metric_names(m.group(1)) <= ALLOWED
            assert m.group(2) == v["name"]
    assert used >= {
        "ferrolab_operations_total",
        "ferrolab_operation_duration_seconds_bucket",
        "ferrolab_errors_total",
        "ferrolab_memory_usage_bytes",
        "ferrolab_cpu_usage_percent",
        "ferrolab_gpu_memory_usage_bytes",
        "ferrolab_gpu_memory_total_bytes",
        "ferrolab_circuit_breaker_state",
        "ferrolab_backup_last_success_timestamp_seconds",
    }


@needs_promtool
def test_dashboard_queries_parse(tmp_path):
    exprs = [substitute_grafana_variables(e) for e in dashboard_exprs(monitoring.grafana_dashboard())]
    doc = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    res = promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_breaker_state_panel_maps_states_to_codes(tmp_path):
    (panel,) = [p for p in dashboard_panels(monitoring.grafana_dashboard()) if p["title"] == "Breaker state"]
    expr = substitute_grafana_variables(panel["targets"][0]["expr"])
    mappings = panel["fieldConfig"]["defaults"]["mappings"]
    codes = {m["options"][k]["text"]: int(k) for m in mappings for k in m["options"]}
    assert codes == {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "disabled": 4}
    series = [  # one breaker in each state, named after it
        {
            "series": f'ferrolab_circuit_breaker_state{{job="app",instance="h:1",name="{current}",state="{state}"}}',
            "values": f"{int(state == current)}x5",
        }
        for current in codes
        for state in codes
    ]
    doc = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": f'{{instance="h:1",name="{s}"}}', "value": c} for s, c in codes.items()
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    res = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


# --- write_monitoring -----------------------------------------------------------------------------------------------


def test_write_monitoring_writes_the_three_files(tmp_path):
    target = tmp_path / "a" / "b"
    paths = monitoring.write_monitoring(str(target))
    assert paths == [
        target / monitoring.ALERT_RULES_FILE,
        target / monitoring.ALERT_TESTS_FILE,
        target / monitoring.DASHBOARD_FILE,
    ]
    assert paths[0].read_text(encoding="utf-8") == monitoring.alert_rules()
    assert paths[1].read_text(encoding="utf-8") == monitoring.alert_rule_tests()
    assert json.loads(paths[2].read_text(encoding="utf-8")) == monitoring.grafana_dashboard()
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in paths)  # no temporary files left


def test_write_monitoring_refuses_to_overwrite(tmp_path):
    (tmp_path / monitoring.DASHBOARD_FILE).write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match="ferrolab-dashboard.json already exists"):
        monitoring.write_monitoring(tmp_path)
    assert (tmp_path / monitoring.DASHBOARD_FILE).read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / monitoring.ALERT_RULES_FILE).exists()  # nothing written
    paths = monitoring.write_monitoring(tmp_path, overwrite=True)
    assert json.loads(paths[2].read_text(encoding="utf-8"))["uid"] == "ferrolab-overview"


def test_write_monitoring_errors(tmp_path):
    with pytest.raises(TypeError, match="write_monitoring\\(\\): argument 'directory' must be a str or os.PathLike"):
        monitoring.write_monitoring(1)
    with pytest.raises(TypeError, match="write_monitoring\\(\\): argument 'overwrite' must be a bool"):
        monitoring.write_monitoring(tmp_path, overwrite="yes")
    f = tmp_path / "file"
    f.write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError):
        monitoring.write_monitoring(f)


# --- CLI ------------------------------------------------------------------------------------------------------------


def test_cli_monitoring(tmp_path, capsys):
    out = tmp_path / "mon"
    assert cli.main(["monitoring", str(out)]) == 0
    assert capsys.readouterr().out.split() == [
        str(out / n) for n in (monitoring.ALERT_RULES_FILE, monitoring.ALERT_TESTS_FILE, monitoring.DASHBOARD_FILE)
    ]
    assert cli.main(["monitoring", str(out)]) == 1
    assert "use --force" in capsys.readouterr().err
    assert cli.main(["monitoring", str(out), "--force"]) == 0
    f = tmp_path / "file"
    f.write_text("x", encoding="utf-8")
    assert cli.main(["monitoring", str(f)]) == 1


def test_cli_monitoring_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["monitoring"])
    assert exc.value.code == 2
    assert "DIR" in capsys.readouterr().err


@pytest.fixture
def default_checks(monkeypatch):
    """An empty default registry for one test; returns its ``register``."""
    registry = health.HealthRegistry()
    monkeypatch.setattr(health, "_DEFAULT", registry)
    assert health.default_registry() is registry
    return registry.register


@pytest.mark.parametrize(
    "status, code", [(health.Status.HEALTHY, 0), (health.Status.WARNING, 0), (health.Status.UNHEALTHY, 1)]
)
def test_cli_health_exit_codes(default_checks, capsys, status, code):
    default_checks("cli-test-ok", lambda: health.Status.HEALTHY)
    default_checks("cli-test-check", lambda: (status, "from the test"))
    assert cli.main(["health"]) == code
    out = capsys.readouterr().out
    assert re.search(rf"^cli-test-check\s+{status.value}\s+\S+s\s+from the test$", out, re.M), out
    assert f"overall: {status.value}" in out
    assert cli.main(["health", "--json"]) == code
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == status.value
    assert report["checks"]["cli-test-check"]["message"] == "from the test"


def test_cli_health_subprocess_with_import(tmp_path):
    (tmp_path / "my_checks.py").write_text(
        textwrap.dedent("""
        from ferrolab import health
        health.register("queue", lambda: (health.Status.UNHEALTHY, "backlog"))
    """),
        encoding="utf-8",
    )

    def ferrolab(*args):
        return subprocess.run(
            [sys.executable, "-m", "ferrolab", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )

    res = ferrolab("health")  # nothing registered: the machine checks run
    assert res.returncode in (0, 1), res.stderr
    assert re.search(r"^overall: \w+ \(3 checks,", res.stdout, re.M), res.stdout
    for name in ("memory", "disk:/", "cpu"):
        assert re.search(rf"^{re.escape(name)}\s", res.stdout, re.M), res.stdout
    res = ferrolab("health", "--json", "--import", "my_checks")
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["checks"]["queue"] == {
        "status": "unhealthy",
        "message": "backlog",
        "duration_seconds": json.loads(res.stdout)["checks"]["queue"]["duration_seconds"],
    }
    res = ferrolab("health", "--import", "no_such_module_here")
    assert res.returncode == 2
    assert "cannot import 'no_such_module_here'" in res.stderr
    assert ferrolab("health", "--bogus").returncode == 2


# --- service level objectives ---------------------------------------------------------------------------------------

SLOS = [
    monitoring.SLO("api", 0.999),
    monitoring.SLO(
        "api-latency", 0.95, kind="latency", threshold_seconds=0.25, matchers={"job": "svc", "operation": "matmul"}
    ),
    monitoring.SLO("weekly", 0.99, period="7d", matchers={"operation": "dot"}),
    # threshold 1: the exposition spells its bucket le="1.0" (as prometheus_client), Go clients le="1"
    monitoring.SLO("slow-ops", 0.9, kind="latency", threshold_seconds=1, period="28d"),
]
SLO_ALERTS = {"FerrolabSLOErrorBudgetBurnFast", "FerrolabSLOErrorBudgetBurnSlow"}


def slo_rules_of(slos) -> list[dict]:
    return [r for g in yaml.safe_load(monitoring.slo_rules(slos))["groups"] for r in g["rules"]]


def test_duration_buckets_are_the_cores():
    fl.ops.sum(np.ones(4))
    text = fl.metrics.exposition()
    les = re.findall(r'^ferrolab_operation_duration_seconds_bucket\{(?=.*operation="sum").*le="([^"]+)"', text, re.M)
    les = list(dict.fromkeys(les))
    # as prometheus_client writes them (le="1.0", "1e-06")
    assert les == [repr(b) for b in monitoring.DURATION_BUCKETS] + ["+Inf"]
    assert [float(x) for x in les[:-1]] == list(monitoring.DURATION_BUCKETS)


def test_slo_defaults_and_normalization():
    s = monitoring.SLO("api", 0.999)
    assert (s.kind, s.period, s.threshold_seconds, s.matchers) == ("availability", "30d", None, {})
    assert s.error_budget == 0.001
    lat = monitoring.SLO("l", 0.95, kind="latency", threshold_seconds=1, matchers={"b": "2", "a": "1"})
    assert lat.threshold_seconds == 1.0 and isinstance(lat.threshold_seconds, float)
    assert list(lat.matchers) == ["a", "b"]
    assert monitoring.SLO("l", 0.95, kind="latency", threshold_seconds=0.000001).threshold_seconds == 1e-6


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"name": 1}, TypeError, "field 'name' must be a str"),
        ({"name": ""}, ValueError, "field 'name' must be 1-64"),
        ({"name": "a b"}, ValueError, "field 'name'"),
        ({"name": "-a"}, ValueError, "field 'name'"),
        ({"objective": "0.999"}, TypeError, "field 'objective' must be a float"),
        ({"objective": True}, TypeError, "field 'objective' must be a float"),
        ({"objective": 1.0}, ValueError, r"field 'objective' must be in \[0.9, 1\), got 1.0"),
        ({"objective": 0.5}, ValueError, "field 'objective' must be in"),
        ({"objective": 99.9}, ValueError, "a fraction: 0.999 for 99.9%"),
        ({"objective": float("nan")}, ValueError, "field 'objective'"),
        ({"kind": "errors"}, ValueError, "field 'kind' must be 'availability' or 'latency'"),
        ({"kind": None}, TypeError, "field 'kind' must be a str"),
        ({"period": 30}, TypeError, "field 'period' must be a str"),
        ({"period": "12h"}, ValueError, "field 'period' must be a Prometheus duration from 1d to 365d"),
        ({"period": "2y"}, ValueError, "field 'period'"),
        ({"period": "30 d"}, ValueError, "field 'period'"),
        ({"threshold_seconds": 0.25}, ValueError, "field 'threshold_seconds' is for kind='latency' only"),
        ({"kind": "latency"}, ValueError, "field 'threshold_seconds' is required for kind='latency'"),
        ({"kind": "latency", "threshold_seconds": "0.25"}, TypeError, "field 'threshold_seconds' must be a float"),
        (
            {"kind": "latency", "threshold_seconds": 0.5},
            ValueError,
            r"field 'threshold_seconds' must be a bucket boundary of ferrolab_operation_duration_seconds \(0.000001, .*"
            r"0.25, 1, 2.5, 10\), got 0.5",
        ),
        ({"kind": "latency", "threshold_seconds": float("inf")}, ValueError, "field 'threshold_seconds'"),
        ({"matchers": ["job"]}, TypeError, "field 'matchers' must be a mapping"),
        ({"matchers": {"job": 1}}, TypeError, "field 'matchers' must map str to str"),
        ({"matchers": {"1job": "x"}}, ValueError, "field 'matchers' has an invalid label name '1job'"),
        ({"matchers": {"__name__": "x"}}, ValueError, "invalid label name"),
        ({"matchers": {"le": "1"}}, ValueError, "field 'matchers' cannot match the reserved label 'le'"),
        ({"matchers": {"status": "error"}}, ValueError, "reserved label 'status'"),
        ({"matchers": {"slo": "x"}}, ValueError, "reserved label 'slo'"),
    ],
)
def test_slo_validation(kwargs, exc, match):
    fields = {"name": "api", "objective": 0.999, **kwargs}
    with pytest.raises(exc, match=r"^SLO\(\): .*" + match):
        monitoring.SLO(**fields)


def test_slo_from_dict():
    s = monitoring.SLO.from_dict(
        {
            "name": "l",
            "objective": 0.95,
            "kind": "latency",
            "threshold_seconds": 0.1,
            "period": "4w",
            "matchers": {"job": "api"},
        }
    )
    assert s == monitoring.SLO("l", 0.95, kind="latency", threshold_seconds=0.1, period="4w", matchers={"job": "api"})
    with pytest.raises(ValueError, match=r"SLO.from_dict\(\): unknown field 'window' \(fields: name, objective"):
        monitoring.SLO.from_dict({"name": "a", "objective": 0.99, "window": "30d"})
    with pytest.raises(ValueError, match=r"SLO.from_dict\(\): missing field 'objective'"):
        monitoring.SLO.from_dict({"name": "a"})
    with pytest.raises(TypeError, match=r"SLO.from_dict\(\): expected a mapping, not list"):
        monitoring.SLO.from_dict([])


def test_slo_windows_scale_with_the_period():
    assert [w[1:] for w in monitoring.SLO("a", 0.999).windows()] == [
        ("critical", 14.4, "1h", "5m"),
        ("critical", 6.0, "6h", "30m"),
        ("warning", 3.0, "1d", "2h"),
        ("warning", 1.0, "3d", "6h"),
    ]
    assert [w[3:] for w in monitoring.SLO("a", 0.999, period="90d").windows()] == [
        ("3h", "15m"),
        ("18h", "1h30m"),
        ("3d", "6h"),
        ("9d", "18h"),
    ]
    # never under 5 minutes: a rate needs several scrapes
    assert [w[3:] for w in monitoring.SLO("a", 0.999, period="1d").windows()] == [
        ("5m", "5m"),
        ("12m", "5m"),
        ("48m", "5m"),
        ("2h24m", "12m"),
    ]
    for slo in SLOS:
        for *_, long, short in slo.windows():
            assert seconds(long) >= seconds(short) >= 300


def test_slo_rules_structure():
    doc = yaml.safe_load(monitoring.slo_rules(SLOS))
    assert [g["name"] for g in doc["groups"]] == [f"ferrolab-slo-{s.name}" for s in SLOS]
    records = "ferrolab:slo_errors_per_request:ratio_rate"
    for slo, group in zip(SLOS, doc["groups"], strict=True):
        windows = {w for *_, long, short in slo.windows() for w in (long, short)} | {slo.period}
        recorded = [r for r in group["rules"] if "record" in r]
        assert {r["record"] for r in recorded} == {records + w for w in windows} | {
            "ferrolab:slo_error_budget_remaining:ratio"
        }
        assert all(r["labels"] == {"slo": slo.name} for r in recorded)
        alerts = [r for r in group["rules"] if "alert" in r]
        assert [(a["alert"], a["labels"]) for a in alerts] == [
            ("FerrolabSLOErrorBudgetBurnFast", {"severity": "critical", "slo": slo.name}),
            ("FerrolabSLOErrorBudgetBurnSlow", {"severity": "warning", "slo": slo.name}),
        ]
        assert group["rules"].index(alerts[0]) > group["rules"].index(recorded[-1])  # records are evaluated first
        for a in alerts:
            assert "for" not in a  # the short window resets the alert; no pending period
            assert set(a["annotations"]) == {"summary", "description"}
            assert "{{ $labels.job }}" in a["annotations"]["summary"]
            # cheap: the alerts read only the recording rules, each with the SLO's label
            assert metric_names(a["expr"]) <= {records + w for w in windows}
            assert a["expr"].count(f'{{slo="{slo.name}"}}') == 4
        for *_, burn, long, short in slo.windows():
            for w in (long, short):
                assert f'{records}{w}{{slo="{slo.name}"}} > ({monitoring._number(burn)} * ' in (
                    alerts[0]["expr"] + alerts[1]["expr"]
                )
        for r in recorded[:-1]:
            names = metric_names(r["expr"])
            if slo.kind == "availability":
                assert names == {"ferrolab_operations_total"} and 'status="error"' in r["expr"]
            else:
                assert names == {
                    "ferrolab_operation_duration_seconds_bucket",
                    "ferrolab_operation_duration_seconds_count",
                }
            for k, v in slo.matchers.items():
                assert r["expr"].count(f'{k}="{v}"') == 2, r["expr"]
            assert "sum by (job)" in r["expr"]
    (lat,) = [r for r in slo_rules_of(SLOS[1:2]) if r.get("record") == records + "5m"]
    assert 'le=~"0\\\\.25"' in lat["expr"]
    (lat,) = [r for r in slo_rules_of(SLOS[3:]) if r.get("record") == records + "5m"]
    assert 'le=~"1|1\\\\.0"' in lat["expr"]


def test_slo_rules_text_is_yaml_without_pyyaml():
    # the package writes YAML itself (PyYAML is not a dependency): check odd names and values survive
    slo = monitoring.SLO("a.b_c-1", 0.999, matchers={"job": 'we"ird\\job: yes', "operation": "true"})
    (rule,) = [r for r in slo_rules_of([slo]) if r.get("record") == "ferrolab:slo_errors_per_request:ratio_rate5m"]
    assert 'job="we\\"ird\\\\job: yes"' in rule["expr"] and 'operation="true"' in rule["expr"]
    assert rule["labels"] == {"slo": "a.b_c-1"}
    assert monitoring._yaml({"a": [], "b": {}, "c": [1, 2.5, True], "d": "null", "e": "x\ny\n"}) == (
        'a: []\nb: {}\nc:\n  - 1\n  - 2.5\n  - true\nd: "null"\ne: |\n  x\n  y'
    )
    assert yaml.safe_load(monitoring._yaml({"e": "x\n\ny"})) == {"e": "x\n\ny"}


@pytest.mark.parametrize("func", [monitoring.slo_rules, monitoring.slo_rule_tests])
def test_slo_rules_argument_errors(func):
    name = func.__name__
    with pytest.raises(ValueError, match=rf"{name}\(\): argument 'slos' is empty"):
        func([])
    with pytest.raises(TypeError, match=rf"{name}\(\): argument 'slos' must be a list of SLO or dict, not SLO"):
        func(SLOS[0])
    with pytest.raises(TypeError, match=rf"{name}\(\): argument 'slos'\[1\] must be an SLO or a dict, not str"):
        func([SLOS[0], "api"])
    with pytest.raises(ValueError, match=rf"{name}\(\): argument 'slos'\[0\]: SLO\(\): field 'objective'"):
        func([{"name": "a", "objective": 2}])
    with pytest.raises(ValueError, match=rf"{name}\(\): argument 'slos' names 'api' twice"):
        func([SLOS[0], {"name": "api", "objective": 0.99}])


def test_slo_rule_tests_cover_fast_slow_and_quiet():
    doc = yaml.safe_load(monitoring.slo_rule_tests(SLOS[:1]))
    assert doc["rule_files"] == [monitoring.SLO_RULES_FILE]
    checks = {}
    for t in doc["tests"]:
        for c in t["promql_expr_test"]:
            m = re.search(r'alertname="(\w+)"', c["expr"])
            if m:
                checks.setdefault(t["name"], []).append((m.group(1), bool(c["exp_samples"])))
    assert checks == {
        "SLO api: 2% errors (20x the budget) pages within minutes": [
            ("FerrolabSLOErrorBudgetBurnFast", True),
            ("FerrolabSLOErrorBudgetBurnSlow", True),
            ("FerrolabSLOErrorBudgetBurnFast", True),
        ],
        "SLO api: a fast burn that stopped pages no more once the short windows are clean": [
            ("FerrolabSLOErrorBudgetBurnFast", True),
            ("FerrolabSLOErrorBudgetBurnFast", False),
        ],
        "SLO api: 0.4% errors (4x the budget) opens a ticket and does not page": [
            ("FerrolabSLOErrorBudgetBurnSlow", True),
            ("FerrolabSLOErrorBudgetBurnFast", False),
        ],
        "SLO api: 0.15% errors (1.5x the budget) opens a ticket and does not page": [
            ("FerrolabSLOErrorBudgetBurnSlow", True),
            ("FerrolabSLOErrorBudgetBurnFast", False),
        ],
        "SLO api: 0.05% errors (half the budget) fires nothing": [
            ("FerrolabSLOErrorBudgetBurnFast", False),
            ("FerrolabSLOErrorBudgetBurnSlow", False),
        ],
    }
    # series the matchers exclude burn beside the quiet case
    doc = yaml.safe_load(monitoring.slo_rule_tests(SLOS[1:2]))
    quiet = doc["tests"][-1]
    assert quiet["name"].endswith("fires nothing, nor do series the matchers exclude")
    decoys = [s["series"] for s in quiet["input_series"] if "-other" in s["series"]]
    assert any('job="svc-other"' in s for s in decoys) and any('operation="matmul-other"' in s for s in decoys)


@needs_promtool
def test_promtool_check_slo_rules(tmp_path):
    path = tmp_path / monitoring.SLO_RULES_FILE
    path.write_text(monitoring.slo_rules(SLOS), encoding="utf-8")
    res = promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(slo_rules_of(SLOS))} rules found" in res.stdout
    assert "lint" not in (res.stdout + res.stderr).lower()


def _alert_checks(test_text: str) -> list[tuple[str, float]]:
    """(ALERTS expr, eval_time in seconds) of every alert check in generated SLO tests."""
    return [
        (c["expr"], seconds(c["eval_time"]))
        for t in yaml.safe_load(test_text)["tests"]
        for c in t["promql_expr_test"]
        if c["expr"].startswith("ALERTS")
    ]


@pytest.fixture(scope="module")
def slo_test_runs(tmp_path_factory):
    """``promtool test rules`` on the generated SLO tests: as generated, with input series spelled as Prometheus 3
    stores them (``le="1.0"``), and against rules broken in two ways: every alert fires at once (``vector(1)``:
    every check must fail), and the alerts ignore their short windows (the stopped fast burn must fail)."""
    base = tmp_path_factory.mktemp("promtool-slo")
    rules_text, tests_text = monitoring.slo_rules(SLOS), monitoring.slo_rule_tests(SLOS)
    doc = yaml.safe_load(rules_text)
    broken = copy.deepcopy(doc)
    long_only = copy.deepcopy(doc)
    for g_broken, g_long in zip(broken["groups"], long_only["groups"], strict=True):
        g_broken["rules"] = [
            {"alert": r["alert"], "expr": "vector(1)", "labels": r["labels"]} for r in g_broken["rules"] if "alert" in r
        ]  # (no recording rules: faster)
        for r in g_long["rules"]:
            if "alert" in r:
                r["expr"] = re.sub(r"\n\s*and\n[^\n]*\n", "\n", r["expr"])
    variants = {
        "shipped": (rules_text, tests_text),
        # the latency SLO with threshold 1 alone
        "go_spelling": (
            monitoring.slo_rules(SLOS[3:]),
            monitoring.slo_rule_tests(SLOS[3:]).replace('le=\\"1.0\\"', 'le=\\"1\\"'),
        ),
        "broken": (yaml.safe_dump(broken), tests_text),
        "long_only": (yaml.safe_dump(long_only), tests_text),
    }
    assert 'le=\\"1\\"' in variants["go_spelling"][1]
    dirs = {}
    for name, (rules_t, tests_t) in variants.items():
        d = base / name
        d.mkdir()
        (d / monitoring.SLO_RULES_FILE).write_text(rules_t, encoding="utf-8")
        (d / monitoring.SLO_TESTS_FILE).write_text(tests_t, encoding="utf-8")
        dirs[name] = d
    with concurrent.futures.ThreadPoolExecutor(len(dirs)) as pool:
        runs = {k: pool.submit(promtool, "test", "rules", monitoring.SLO_TESTS_FILE, cwd=d) for k, d in dirs.items()}
        return {k: f.result() for k, f in runs.items()}


def _failed_checks(res: subprocess.CompletedProcess) -> list[tuple[str, float]]:
    out = res.stdout + res.stderr
    return [(json.loads(expr), seconds(t)) for expr, t in re.findall(r'expr: ("(?:[^"\\]|\\.)*"), time: (\w+),', out)]


@needs_promtool
@pytest.mark.parametrize("variant", ["shipped", "go_spelling"])
def test_promtool_test_slo_rules(slo_test_runs, variant):
    res = slo_test_runs[variant]
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_every_slo_alert_check_can_fail(slo_test_runs):
    res = slo_test_runs["broken"]
    assert res.returncode != 0
    expected = _alert_checks(monitoring.slo_rule_tests(SLOS))
    assert sorted(c for c in _failed_checks(res) if c[0].startswith("ALERTS")) == sorted(expected)


@needs_promtool
def test_the_short_windows_matter(slo_test_runs):
    res = slo_test_runs["long_only"]
    assert res.returncode != 0
    failed = _failed_checks(res)
    assert failed, res.stdout + res.stderr
    # only the checks that a stopped fast burn pages no more fail, one per SLO
    assert len(failed) == len(SLOS)
    assert all('alertname="FerrolabSLOErrorBudgetBurnFast"' in expr for expr, _ in failed)


# --- SLO dashboard, files and CLI -----------------------------------------------------------------------------------


def test_dashboard_with_slos():
    plain = monitoring.grafana_dashboard()
    d = monitoring.grafana_dashboard(SLOS)
    assert d["panels"][: len(plain["panels"])] == plain["panels"]
    row, panel = d["panels"][len(plain["panels"]) :]
    assert row["type"] == "row" and row["title"] == "Service level objectives"
    assert panel["title"] == "Error budget remaining" and panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    (target,) = panel["targets"]
    assert target["expr"] == (
        'ferrolab:slo_error_budget_remaining:ratio{slo=~"api|api\\\\-latency|weekly|slow\\\\-ops", job=~"$job"}'
    )
    panels = dashboard_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cell & cells, p["title"]
        cells |= cell
    assert monitoring.grafana_dashboard([]) == plain
    assert monitoring.grafana_dashboard() == plain  # the shipped one is untouched


@needs_promtool
def test_dashboard_slo_query_reads_the_recording_rule(tmp_path):
    # the panel's query, run on what the SLO rules record (a name with characters that regexes escape)
    slo = monitoring.SLO("api-v1.2", 0.999)
    expr = substitute_grafana_variables(monitoring.grafana_dashboard([slo])["panels"][-1]["targets"][0]["expr"])
    (tmp_path / monitoring.SLO_RULES_FILE).write_text(monitoring.slo_rules([slo]), encoding="utf-8")
    doc = {
        "rule_files": [monitoring.SLO_RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'ferrolab_operations_total{job="app",status="error"}', "values": "0+1x60"},
                    {"series": 'ferrolab_operations_total{job="app",status="success"}', "values": "0+3999x60"},
                ],
                # 0.025% errors spend a quarter of a 0.1% budget
                "promql_expr_test": [
                    {
                        "expr": f"({expr} > bool 0.7499) * ({expr} < bool 0.7501)",
                        "eval_time": "60m",
                        "exp_samples": [{"labels": '{job="app", slo="api-v1.2"}', "value": 1}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    res = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_write_monitoring_with_slos(tmp_path):
    paths = monitoring.write_monitoring(
        tmp_path, slos=[SLOS[0], {"name": "lat", "objective": 0.95, "kind": "latency", "threshold_seconds": 0.25}]
    )
    assert [p.name for p in paths] == [
        monitoring.ALERT_RULES_FILE,
        monitoring.ALERT_TESTS_FILE,
        monitoring.DASHBOARD_FILE,
        monitoring.SLO_RULES_FILE,
        monitoring.SLO_TESTS_FILE,
    ]
    slos = [SLOS[0], monitoring.SLO("lat", 0.95, kind="latency", threshold_seconds=0.25)]
    assert paths[0].read_text(encoding="utf-8") == monitoring.alert_rules()
    assert json.loads(paths[2].read_text(encoding="utf-8")) == monitoring.grafana_dashboard(slos)
    assert paths[3].read_text(encoding="utf-8") == monitoring.slo_rules(slos)
    assert paths[4].read_text(encoding="utf-8") == monitoring.slo_rule_tests(slos)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    # the SLO files count as existing files too
    other = tmp_path / "other"
    other.mkdir()
    (other / monitoring.SLO_TESTS_FILE).write_text("mine", encoding="utf-8")
    monitoring.write_monitoring(other)  # without SLOs the SLO files are not written
    assert (other / monitoring.SLO_TESTS_FILE).read_text(encoding="utf-8") == "mine"
    for p in other.iterdir():
        if p.name != monitoring.SLO_TESTS_FILE:
            p.unlink()
    with pytest.raises(FileExistsError, match="ferrolab-slo.test.yml already exists"):
        monitoring.write_monitoring(other, slos=slos)
    assert [p.name for p in other.iterdir()] == [monitoring.SLO_TESTS_FILE]
    with pytest.raises(TypeError, match=r"write_monitoring\(\): argument 'slos' must be a list of SLO or dict"):
        monitoring.write_monitoring(other, slos="api")
    with pytest.raises(ValueError, match=r"write_monitoring\(\): argument 'slos'\[0\]: SLO\(\): field 'kind'"):
        monitoring.write_monitoring(other, slos=[{"name": "a", "objective": 0.99, "kind": "x"}])


def test_load_slos(tmp_path):
    spec = [
        {"name": "api", "objective": 0.999, "matchers": {"job": "api"}},
        {"name": "lat", "objective": 0.95, "kind": "latency", "threshold_seconds": 0.25, "period": "7d"},
    ]
    expected = [
        monitoring.SLO("api", 0.999, matchers={"job": "api"}),
        monitoring.SLO("lat", 0.95, kind="latency", threshold_seconds=0.25, period="7d"),
    ]
    (tmp_path / "a.json").write_text(json.dumps(spec), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"slos": spec}), encoding="utf-8")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"slos": spec}), encoding="utf-8")
    (tmp_path / "d.yml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    for name in ("a.json", "b.json", "c.yaml", "d.yml"):
        assert monitoring.load_slos(tmp_path / name) == expected, name
        assert monitoring.load_slos(str(tmp_path / name)) == expected, name


@pytest.mark.parametrize(
    "text, exc, match",
    [
        ("{", ValueError, "is not valid JSON"),
        ("[]", ValueError, "must hold a non-empty list of SLOs"),
        ('{"slo": []}', ValueError, "must hold a non-empty list of SLOs"),
        (
            '[{"name": "a", "objective": 0.99}, {"name": "b", "objective": "high"}]',
            TypeError,
            r"SLO #2: SLO\(\): field 'objective' must be a float",
        ),
        (
            '[{"name": "a", "objective": 0.99, "window": "30d"}]',
            ValueError,
            "SLO #1: SLO.from_dict\\(\\): unknown field",
        ),
        ('[{"name": "a", "objective": 0.99}, {"name": "a", "objective": 0.9}]', ValueError, "names 'a' twice"),
        (
            '[{"name": "l", "objective": 0.95, "kind": "latency", "threshold_seconds": 0.5}]',
            ValueError,
            "field 'threshold_seconds' must be a bucket boundary",
        ),
    ],
)
def test_load_slos_errors(tmp_path, text, exc, match):
    f = tmp_path / "slos.json"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(exc, match=r"^load_slos\(\): .*slos.json.*" + match):
        monitoring.load_slos(f)


def test_load_slos_other_errors(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match=r"load_slos\(\): argument 'path' must be a str or os.PathLike"):
        monitoring.load_slos(1)
    with pytest.raises(FileNotFoundError):
        monitoring.load_slos(tmp_path / "missing.json")
    f = tmp_path / "slos.yml"
    f.write_text("- name: [\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid YAML"):
        monitoring.load_slos(f)
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML missing
    with pytest.raises(ValueError, match=r"is YAML, which needs PyYAML \(pip install pyyaml\); or write the SLOs as"):
        monitoring.load_slos(f)


def test_cli_monitoring_slo(tmp_path, capsys):
    spec = tmp_path / "slos.json"
    spec.write_text(json.dumps([{"name": "api", "objective": 0.999}]), encoding="utf-8")
    out = tmp_path / "mon"
    assert cli.main(["monitoring", str(out), "--slo", str(spec)]) == 0
    names = [
        monitoring.ALERT_RULES_FILE,
        monitoring.ALERT_TESTS_FILE,
        monitoring.DASHBOARD_FILE,
        monitoring.SLO_RULES_FILE,
        monitoring.SLO_TESTS_FILE,
    ]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    assert (out / monitoring.SLO_RULES_FILE).read_text(encoding="utf-8") == monitoring.slo_rules(
        [monitoring.SLO("api", 0.999)]
    )
    assert cli.main(["monitoring", str(out), "--slo", str(spec)]) == 1
    assert "use --force" in capsys.readouterr().err
    assert cli.main(["monitoring", str(out), "--slo", str(spec), "--force"]) == 0
    capsys.readouterr()
    spec.write_text(
        json.dumps([{"name": "lat", "objective": 0.95, "kind": "latency", "threshold_seconds": 0.5}]), encoding="utf-8"
    )
    assert cli.main(["monitoring", str(tmp_path / "new"), "--slo", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferrolab monitoring: --slo: load_slos(): ") and "'threshold_seconds'" in err
    assert not (tmp_path / "new").exists()
    assert cli.main(["monitoring", str(tmp_path / "new"), "--slo", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
