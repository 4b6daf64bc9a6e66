"""Monitoring assets (alert rules, their promtool tests, the Grafana dashboard), write_monitoring and the CLI."""

from __future__ import annotations

import concurrent.futures
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
ALLOWED = SERIES | PROMETHEUS_SERIES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

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

PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "offset", "Inf", "NaN", "inf", "nan"}


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
        if m.group() in PROMQL_KEYWORDS or s[m.end():].lstrip().startswith("("):
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
    assert re.search(r'^ferrolab_operations_total\{(?=.*operation="dot")(?=.*device="cpu")(?=.*status="error").*\} ',
                     text, re.M)
    assert re.search(r'^ferrolab_operations_total\{(?=.*operation="sum")(?=.*status="success").*\} ', text, re.M)
    assert re.search(r'^ferrolab_errors_total\{(?=.*operation="dot")(?=.*error_type=").*\} ', text, re.M)
    assert re.search(r'^ferrolab_operation_duration_seconds_bucket\{(?=.*operation="sum")(?=.*device=")(?=.*le=")',
                     text, re.M)


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
        runs = {k: pool.submit(promtool, "test", "rules", monitoring.ALERT_TESTS_FILE, cwd=d)
                for k, d in (("shipped", shipped), ("broken", broken))}
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
    doc = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e}
                                                      for i, e in enumerate(exprs)]}]}
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
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": expr,
                "eval_time": "2m",
                "exp_samples": [{"labels": f'{{instance="h:1",name="{s}"}}', "value": c} for s, c in codes.items()],
            }],
        }],
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    res = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


# --- write_monitoring -----------------------------------------------------------------------------------------------


def test_write_monitoring_writes_the_three_files(tmp_path):
    target = tmp_path / "a" / "b"
    paths = monitoring.write_monitoring(str(target))
    assert paths == [target / monitoring.ALERT_RULES_FILE, target / monitoring.ALERT_TESTS_FILE,
                     target / monitoring.DASHBOARD_FILE]
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
    assert capsys.readouterr().out.split() == [str(out / n) for n in (monitoring.ALERT_RULES_FILE,
                                                                       monitoring.ALERT_TESTS_FILE,
                                                                       monitoring.DASHBOARD_FILE)]
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
    (tmp_path / "my_checks.py").write_text(textwrap.dedent("""
        from ferrolab import health
        health.register("queue", lambda: (health.Status.UNHEALTHY, "backlog"))
    """), encoding="utf-8")

    def ferrolab(*args):
        return subprocess.run([sys.executable, "-m", "ferrolab", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT, check=False)

    res = ferrolab("health")  # nothing registered: the machine checks run
    assert res.returncode in (0, 1), res.stderr
    assert re.search(r"^overall: \w+ \(3 checks,", res.stdout, re.M), res.stdout
    for name in ("memory", "disk:/", "cpu"):
        assert re.search(rf"^{re.escape(name)}\s", res.stdout, re.M), res.stdout
    res = ferrolab("health", "--json", "--import", "my_checks")
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["checks"]["queue"] == {
        "status": "unhealthy", "message": "backlog", "duration_seconds": json.loads(res.stdout)["checks"]["queue"][
            "duration_seconds"]}
    res = ferrolab("health", "--import", "no_such_module_here")
    assert res.returncode == 2
    assert "cannot import 'no_such_module_here'" in res.stderr
    assert ferrolab("health", "--bogus").returncode == 2
