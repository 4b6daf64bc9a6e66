"""`ferrolab backup`: argument parsing, password sources and usage errors (exit 2) found before any repository is
opened."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from ferrolab import cli


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No repository or password from the environment, and stdin is not a terminal (no prompt)."""
    for var in ("FERROLAB_REPOSITORY", "FERROLAB_PASSWORD", "FERROLAB_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["backup", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def usage_exit(capsys, *argv: str) -> str:
    """argparse's own usage errors: SystemExit(2)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["backup", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_help_lists_every_command_and_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["backup", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("init", "create", "list", "restore", "verify", "forget", "prune", "unlock"):
        assert f"\n    {command} " in out
    for words in ("FERROLAB_REPOSITORY", "FERROLAB_PASSWORD", "--password-file", "--key-file", "exit status",
                  "2 usage"):
        assert words in out
    with pytest.raises(SystemExit):
        cli.main(["backup", "forget", "--help"])
    out = capsys.readouterr().out
    for option in ("--keep-last", "--keep-hourly", "--keep-daily", "--keep-weekly", "--keep-monthly", "--keep-yearly",
                   "--keep-within", "--dry-run", "--prune", "--group-by"):
        assert option in out


def test_no_command_prints_the_help_and_exits_2(capsys) -> None:
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert "usage: ferrolab backup" in err and "forget" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["restore"],  # --target is required
        ["create"],  # at least one PATH
        ["forget", "--keep-last", "x"],
        ["forget", "--keep-daily", "1.5"],
        ["init", "--compression", "fast"],
        ["list", "--bogus"],
        ["verify", "extra"],
    ],
)
def test_argparse_usage_errors_exit_2(capsys, argv) -> None:
    err = usage_exit(capsys, "-r", "/srv/backups", *argv)
    assert "error:" in err


def test_common_options_are_accepted_before_and_after_the_command() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["backup", "-r", "/a", "--password-file", "/pw", "--no-progress", "list"])
    after = parser.parse_args(["backup", "list", "--repo", "/a", "--password-file", "/pw", "--no-progress"])
    for args in (before, after):
        assert (args.repo, args.password_file, args.key_file, args.no_progress) == ("/a", "/pw", None, True)
        assert args.backup_func is cli._backup_list
    # given at both places: the command's own wins, and the other one is not lost
    both = parser.parse_args(["backup", "-r", "/a", "--key-file", "/k", "list", "-r", "/b"])
    assert (both.repo, both.key_file) == ("/b", "/k")
    defaults = parser.parse_args(["backup", "list"])
    assert (defaults.repo, defaults.password_file, defaults.key_file, defaults.no_progress) == (None, None, None, False)


def test_options_of_the_commands() -> None:
    parser = cli.build_parser()
    a = parser.parse_args(["backup", "create", "d1", "d2", "--tag", "a,b", "--tag", "c", "--exclude", "*.tmp",
                           "--exclude", "**/cache", "--host", "box"])
    assert (a.paths, a.tag, a.exclude, a.host) == (["d1", "d2"], ["a,b", "c"], ["*.tmp", "**/cache"], "box")
    assert cli._split_tags(a.tag) == ["a", "b", "c"]
    a = parser.parse_args(["backup", "restore", "1a2b", "--target", "out", "--include", "x", "--include", "/y"])
    assert (a.snapshot, a.target, a.include, a.at) == ("1a2b", "out", ["x", "/y"], None)
    a = parser.parse_args(["backup", "restore", "--target", "out", "--at", "2024-05-01T18:00"])
    assert (a.snapshot, a.at) == (None, "2024-05-01T18:00")
    a = parser.parse_args(["backup", "forget", "--keep-last", "3", "--keep-weekly", "4", "--keep-within", "2y5m",
                           "--dry-run", "--prune", "--group-by", "host"])
    assert (a.keep_last, a.keep_hourly, a.keep_weekly, a.keep_within) == (3, None, 4, "2y5m")
    assert (a.dry_run, a.prune, a.group_by) == (True, True, "host")
    assert parser.parse_args(["backup", "forget", "--keep-last", "1"]).group_by == "host,paths"
    assert parser.parse_args(["backup", "init"]).compression == 3
    assert parser.parse_args(["backup", "verify", "--metadata-only", "--json"]).metadata_only


def test_no_repository_exits_2(capsys) -> None:
    code, out, err = run(capsys, "list", "--password-file", os.devnull)
    assert code == 2 and out == ""
    assert "no repository" in err and "FERROLAB_REPOSITORY" in err


def test_no_password_without_a_terminal_exits_2(capsys, tmp_path) -> None:
    for command in (["list"], ["init"], ["unlock"], ["verify"]):
        code, _, err = run(capsys, "-r", str(tmp_path / "repo"), *command)
        assert code == 2
        assert "no password" in err and "--password-file" in err and "FERROLAB_PASSWORD" in err
    assert not (tmp_path / "repo").exists()


def test_bad_password_sources_exit_2(capsys, tmp_path, monkeypatch) -> None:
    repo = str(tmp_path / "repo")
    code, _, err = run(capsys, "-r", repo, "--password-file", str(tmp_path / "missing"), "list")
    assert code == 2 and "--password-file" in err and "missing" in err
    empty = tmp_path / "empty"
    empty.write_text("\nsecond line is not the password\n")
    code, _, err = run(capsys, "-r", repo, "--password-file", str(empty), "list")
    assert code == 2 and "empty" in err
    code, _, err = run(capsys, "-r", repo, "--password-file", str(empty), "--key-file", str(empty), "list")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "-r", repo, "--key-file", str(tmp_path / "nokey"), "list")
    assert code == 2 and "--key-file" in err
    monkeypatch.setenv("FERROLAB_PASSWORD_FILE", str(tmp_path / "missing"))
    code, _, err = run(capsys, "-r", repo, "list")
    assert code == 2 and "FERROLAB_PASSWORD_FILE" in err


def test_password_sources_in_order(tmp_path, monkeypatch) -> None:
    parser = cli.build_parser()
    pw = tmp_path / "pw"
    pw.write_bytes(b"s3cret\r\nignored\n")
    args = parser.parse_args(["backup", "list", "--password-file", str(pw)])
    assert cli._backup_credentials(args) == (b"s3cret", None)
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    args = parser.parse_args(["backup", "list", "--key-file", str(key)])
    assert cli._backup_credentials(args) == (None, str(key))
    args = parser.parse_args(["backup", "list"])
    monkeypatch.setenv("FERROLAB_PASSWORD_FILE", str(pw))
    assert cli._backup_credentials(args) == (b"s3cret", None)
    monkeypatch.setenv("FERROLAB_PASSWORD", "from-env")
    assert cli._backup_credentials(args) == (None, None)  # left to the library, which reads FERROLAB_PASSWORD first


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_prompts_on_a_terminal_and_init_asks_twice(capsys, monkeypatch, tmp_path) -> None:
    import getpass

    answers: list[str] = []
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    args = cli.build_parser().parse_args(["backup", "list"])
    answers[:] = ["typed"]
    assert cli._backup_credentials(args) == ("typed", None)
    assert len(prompts) == 1
    answers[:] = ["one", "two"]
    code, _, err = run(capsys, "-r", str(tmp_path / "repo"), "init")
    assert code == 2 and "do not match" in err
    assert len(prompts) == 3 and not answers
    answers[:] = [""]
    code, _, err = run(capsys, "-r", str(tmp_path / "repo"), "init")
    assert code == 2 and "empty" in err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["forget"], "no policy"),
        (["forget", "--keep-last", "0"], "no policy"),
        (["forget", "--keep-within", "0h"], "no policy"),
        (["forget", "--keep-last", "-1"], "keep_last"),
        (["forget", "--keep-within", "2w"], "keep_within"),
        (["forget", "--keep-last", "1", "--group-by", "host,colour"], "group_by"),
        (["restore", "abcd", "--at", "2024-05-01", "--target", "out"], "not both"),
        (["restore", "--at", "yesterday", "--target", "out"], "ISO 8601"),
        (["create", "/no/such/dir/for/ferrolab"], "no such file"),
        (["init", "--compression", "0"], "1..22"),
        (["init", "--compression", "23"], "1..22"),
    ],
)
def test_bad_arguments_exit_2_before_asking_for_a_password(capsys, argv, message) -> None:
    # no password source is set and stdin is no terminal: reaching the password step would say "no password"
    code, out, err = run(capsys, "-r", "/srv/backups", *argv)
    assert code == 2, err
    assert message in err and "no password" not in err
    assert err.startswith(f"ferrolab backup {argv[0]}: ")


def test_exit_code_of_the_real_command(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROLAB_")}
    proc = subprocess.run([sys.executable, "-m", "ferrolab", "backup", "-r", str(tmp_path), "list"],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 2
    assert "no password" in proc.stderr and proc.stdout == ""


def test_the_backup_command_does_not_import_numpy_asyncio_or_urllib() -> None:
    # start-up time: `ferrolab backup` runs often (cron, CI) and needs none of them
    code = (
        "import sys, ferrolab.cli\n"
        "try:\n"
        "    ferrolab.cli.main(['backup', '-r', 'nowhere', 'list'])\n"
        "finally:\n"
        "    heavy = sorted(m for m in ('numpy', 'asyncio', 'urllib.request') if m in sys.modules)\n"
        "    print('heavy:', heavy)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROLAB_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert "no password" in proc.stderr
    assert "heavy: []" in proc.stdout, proc.stdout


def test_submodules_load_on_first_use() -> None:
    # ferrolab.ops brings NumPy: it runs on first use, into the module object the package and sys.modules already
    # hold, and the package has no module __getattr__ (which would slow every fl.ops.x lookup)
    code = (
        "import sys, types, ferrolab as fl\n"
        "assert 'numpy' not in sys.modules and 'asyncio' not in sys.modules\n"
        "assert '__getattr__' not in vars(fl)\n"
        "assert {'ops', 'health', 'metrics', 'backup', 'tracing', 'gpu', 'monitoring'} <= set(dir(fl))\n"
        "from ferrolab import ops\n"
        "assert 'numpy' not in sys.modules\n"
        "import numpy as np\n"
        "assert float(ops.sum(np.ones(3))) == 3.0\n"
        "assert ops is fl.ops is sys.modules['ferrolab.ops'] and type(ops) is types.ModuleType\n"
        "# ops runs gpu, which tells the native GPU backend where NVRTC is, before any op can use it\n"
        "assert type(sys.modules['ferrolab.gpu']) is types.ModuleType\n"
        "import ferrolab.health\n"
        "from ferrolab import health\n"
        "assert 'asyncio' not in sys.modules  # bound, not run yet\n"
        "assert callable(health.run) and 'asyncio' in sys.modules and type(health) is types.ModuleType\n"
        "assert health is fl.health is sys.modules['ferrolab.health']\n"
        "ns = {}\n"
        "exec('from ferrolab import *', ns)\n"
        "assert all(name in ns for name in fl.__all__)\n"
        "try:\n"
        "    fl.nonexistent\n"
        "except AttributeError as e:\n"
        "    assert \"'nonexistent'\" in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_help_documents_exit_status_3_and_damaged_snapshots(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["backup", "--help"])
    out = capsys.readouterr().out
    assert "3 create saved a snapshot but some files or directories could not be read" in " ".join(out.split())
    with pytest.raises(SystemExit):
        cli.main(["backup", "create", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "printed on stderr and the exit status is 3" in out and "list found snapshots that cannot be read" in out
