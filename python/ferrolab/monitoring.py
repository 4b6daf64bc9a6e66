"""Monitoring assets shipped with ferrolab: Prometheus alerting rules, their unit tests, a Grafana dashboard.

The files are package data (``ferrolab/assets``) and use only the series that :mod:`ferrolab.metrics` exports
and those that the pytest plugin's ``--ops-push`` pushes:

* ``ferrolab-alerts.yml``: alerting rules (error rate, p95 latency, process and GPU memory, circuit breakers,
  stale or missing backups, failed ops checks and ops checks that stopped running), each with a ``severity``
  label and ``summary``/``description`` annotations;
* ``ferrolab-alerts.test.yml``: ``promtool test rules`` unit tests of those rules;
* ``ferrolab-dashboard.json``: a Grafana dashboard with a ``datasource`` variable and ``job``/``instance`` filters.

``ferrolab monitoring DIR`` (or :func:`write_monitoring`) copies them into a directory, ready for
``rule_files:`` in ``prometheus.yml`` and for Grafana's dashboard import or provisioning.

Examples
--------
>>> import ferrolab.monitoring as monitoring
>>> "alert: FerrolabCircuitBreakerOpen" in monitoring.alert_rules()
True
>>> monitoring.grafana_dashboard()["uid"]
'ferrolab-overview'
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from importlib import resources
from typing import Any

__all__ = ["ALERT_RULES_FILE", "ALERT_TESTS_FILE", "DASHBOARD_FILE", "alert_rules", "alert_rule_tests",
           "grafana_dashboard", "write_monitoring"]

#: File names, as written by :func:`write_monitoring` (the test file refers to the rules file by this name).
ALERT_RULES_FILE = "ferrolab-alerts.yml"
ALERT_TESTS_FILE = "ferrolab-alerts.test.yml"
DASHBOARD_FILE = "ferrolab-dashboard.json"

_FILES = (ALERT_RULES_FILE, ALERT_TESTS_FILE, DASHBOARD_FILE)


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def alert_rules() -> str:
    """The Prometheus alerting rules (YAML text of ``ferrolab-alerts.yml``).

    Examples
    --------
    >>> import yaml, ferrolab.monitoring as monitoring
    >>> groups = yaml.safe_load(monitoring.alert_rules())["groups"]
    >>> [g["name"] for g in groups]  # doctest: +NORMALIZE_WHITESPACE
    ['ferrolab-targets', 'ferrolab-operations', 'ferrolab-resources', 'ferrolab-resilience', 'ferrolab-backup',
     'ferrolab-ops-checks']
    """
    return _asset(ALERT_RULES_FILE)


def alert_rule_tests() -> str:
    """``promtool test rules`` unit tests of :func:`alert_rules` (YAML text of ``ferrolab-alerts.test.yml``).

    The tests load the rules from ``ferrolab-alerts.yml`` in the same directory, as :func:`write_monitoring`
    lays them out.

    Examples
    --------
    >>> import yaml, ferrolab.monitoring as monitoring
    >>> yaml.safe_load(monitoring.alert_rule_tests())["rule_files"]
    ['ferrolab-alerts.yml']
    """
    return _asset(ALERT_TESTS_FILE)


def grafana_dashboard() -> dict[str, Any]:
    """The Grafana dashboard as a dict (a new copy on every call).

    Examples
    --------
    >>> import ferrolab.monitoring as monitoring
    >>> d = monitoring.grafana_dashboard()
    >>> [v["name"] for v in d["templating"]["list"]]
    ['datasource', 'job', 'instance']
    """
    return json.loads(_asset(DASHBOARD_FILE))


def write_monitoring(directory: str | os.PathLike[str], *, overwrite: bool = False) -> list[pathlib.Path]:
    """Write the alerting rules, their unit tests and the dashboard into ``directory``.

    The directory (and its parents) is created if needed. Nothing is written when one of the three files already
    exists, unless ``overwrite=True``. Each file is written to a temporary file first and then renamed, so a
    reader never sees half a file.

    Parameters
    ----------
    directory : str or os.PathLike
        Where to write ``ferrolab-alerts.yml``, ``ferrolab-alerts.test.yml`` and ``ferrolab-dashboard.json``.
    overwrite : bool, optional
        Replace files that exist (default False).

    Returns
    -------
    list of pathlib.Path
        The paths written, in the order above.

    Raises
    ------
    TypeError
        ``directory`` is not a path or ``overwrite`` is not a bool.
    FileExistsError
        One of the files exists and ``overwrite`` is False (or ``directory`` is a file).

    Examples
    --------
    >>> import pathlib, tempfile, ferrolab.monitoring as monitoring
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = monitoring.write_monitoring(pathlib.Path(tmp) / "monitoring")
    ...     print([p.name for p in paths])
    ...     try:
    ...         monitoring.write_monitoring(pathlib.Path(tmp) / "monitoring")
    ...     except FileExistsError as e:
    ...         print("refused")
    ['ferrolab-alerts.yml', 'ferrolab-alerts.test.yml', 'ferrolab-dashboard.json']
    refused
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"write_monitoring(): argument 'directory' must be a str or os.PathLike, "
                        f"not {type(directory).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"write_monitoring(): argument 'overwrite' must be a bool, not {type(overwrite).__name__}")
    root = pathlib.Path(directory)
    targets = [root / name for name in _FILES]
    if not overwrite:
        existing = [str(p) for p in targets if p.exists() or p.is_symlink()]
        if existing:
            raise FileExistsError(
                f"write_monitoring(): {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''} "
                "(pass overwrite=True to replace)"
            )
    contents = [_asset(name) for name in _FILES]  # read everything before touching the directory
    root.mkdir(parents=True, exist_ok=True)
    for path, text in zip(targets, contents, strict=True):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
    return targets
