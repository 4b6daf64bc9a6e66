"""Every ``ferrolab`` subcommand: ``--help`` shows examples and the exit statuses; bad arguments exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ferrolab import cli, health

COMMANDS = ["demo", "info", "health", "system", "monitoring", "serve", "bench", "backup"]
BACKUP_COMMANDS = ["init", "create", "list", "restore", "verify", "forget", "prune", "unlock"]


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_every_command_is_covered() -> None:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS), *(["backup", c] for c in BACKUP_COMMANDS)],
                         ids=lambda a: " ".join(a) or "ferrolab")
def test_help_has_an_example_and_the_exit_status(capsys, argv: list[str]) -> None:
    text = _help(capsys, argv)
    assert "examples:" in text
    example = text.split("examples:", 1)[1]
    lines = [line.strip() for line in example.splitlines() if line.strip().startswith("ferrolab")]
    assert any(all(word in line.split() for word in argv) for line in lines), text
    assert "exit status: 0" in text and "2 usage error" in text


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["demo", "--size", "0"],
        ["demo", "--repeat", "-1"],
        ["demo", "--size", "many"],
        ["info", "extra"],
        ["health", "--no-such-option"],
        ["system", "--watch", "0"],
        ["system", "--watch", "soon"],
        ["monitoring"],
        ["monitoring", "out", "--slo", "no-such-slos.json"],
        ["serve", "--port", "70000"],
        ["serve", "--port", "-1"],
        ["serve", "--duration", "-1"],
        ["serve", "--duration", "nan"],
        ["bench", "--quick", "extra"],
        ["backup"],
        ["backup", "list"],  # no repository
    ],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_usage_errors_exit_2(argv: list[str], monkeypatch) -> None:
    monkeypatch.delenv("FERROLAB_REPOSITORY", raising=False)
    proc = subprocess.run([sys.executable, "-m", "ferrolab", *argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip(), "a usage error says what is wrong"


def test_ok_and_failed_exit_statuses(tmp_path, capsys, monkeypatch) -> None:
    assert cli.main(["info"]) == 0
    assert cli.main(["monitoring", str(tmp_path)]) == 0
    assert cli.main(["monitoring", str(tmp_path)]) == 1  # the files exist
    for name, min_free, code in (("healthy", 0, 0), ("unhealthy", 100, 1)):
        monkeypatch.setattr(health, "_DEFAULT", health.HealthRegistry())  # --config adds to the default registry
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[[check]]\nname = "root"\nkind = "disk"\nparameters = {{ path = "/", '
                          f"min_free_percent = {min_free} }}\n")
        assert cli.main(["health", "--config", str(config)]) == code, capsys.readouterr()
