"""The ``ferrolab`` command line (also ``python -m ferrolab``).

Exit codes: 0 ok, 1 a check failed (unhealthy) or the command could not complete, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import __version__

if TYPE_CHECKING:
    from .health import HealthReport


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(size=args.size, repeat=args.repeat)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import gpu
    from .runtime import num_threads, simd_level

    print(
        json.dumps(
            {"version": __version__, "simd": simd_level(), "threads": num_threads(), "gpu": gpu.info()},
            indent=2,
        )
    )
    return 0


def _health_table(report: HealthReport) -> str:
    return str(report)


def _cmd_health(args: argparse.Namespace) -> int:
    from . import health

    if args.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory can be imported
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported the same way
            print(f"ferrolab health: cannot import {module!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    registry = health.default_registry()
    if args.config:
        try:
            health.load_config(args.config, registry)
        except health.ConfigError as exc:
            print(f"ferrolab health: bad configuration: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"ferrolab health: cannot read {args.config!r}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    elif len(registry) == 0:
        # nothing registered and nothing configured: the machine checks
        for name, check in health.default_checks().items():
            registry.register(name, check)
    report = registry.run()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(_health_table(report))
    return 0 if report.ok else 1


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _system_table(s: dict[str, Any]) -> str:
    m, p, n = s["memory"], s["process"], s["network"]
    load = " ".join(f"{v:.2f}" for v in s["load_avg"])
    rows = [
        ("cpu", f"{s['cpu_percent']:.1f}% of {s['cpu_count']} cores, load {load}"),
        ("memory", f"{m['percent']:.1f}% used, {_size(m['available'])} of {_size(m['total'])} available"),
    ]
    for d in s["disks"]:
        rows.append((f"disk {d['mount']}", f"{d['percent']:.1f}% full, {_size(d['free'])} of {_size(d['total'])} free"))
    rows.append(("network", f"sent {_size(n['bytes_sent'])} ({n['packets_sent']} packets), "
                            f"received {_size(n['bytes_recv'])} ({n['packets_recv']} packets)"))
    rows.append(("process", f"rss {_size(p['rss'])}, cpu {p['cpu_percent']:.1f}%, {p['threads']} threads"))
    for i, g in enumerate(s["gpus"]):
        rows.append((f"gpu {i}", f"{g['name']}, {_size(g['memory_total'])}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _system_line(s: dict[str, Any]) -> str:
    disks = " ".join(f"{d['mount']}={d['percent']:.0f}%" for d in s["disks"])
    return (f"{time.strftime('%H:%M:%S')} cpu={s['cpu_percent']:.1f}% load1={s['load_avg'][0]:.2f} "
            f"mem={s['memory']['percent']:.1f}% {disks} rss={_size(s['process']['rss'])}")


def _cmd_system(args: argparse.Namespace) -> int:
    from . import system

    if args.watch is None:
        s = system.snapshot()
        print(json.dumps(s, indent=2) if args.json else _system_table(s))
        return 0
    if not (0 < args.watch <= MAX_SECONDS):
        print(f"ferrolab system: --watch needs a positive number of seconds up to {MAX_SECONDS:g}", file=sys.stderr)
        return 2
    tty = sys.stdout.isatty() and not args.json
    system.snapshot()  # the first CPU figure is then the usage over the first interval
    try:
        while True:
            time.sleep(args.watch)
            s = system.snapshot()
            if args.json:
                print(json.dumps(s), flush=True)
            elif tty:
                print("\033[H\033[J" + _system_table(s), flush=True)
            else:
                print(_system_line(s), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, also at interpreter exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _cmd_monitoring(args: argparse.Namespace) -> int:
    from . import monitoring as mon

    slos = []
    if args.slo is not None:
        try:
            slos = mon.load_slos(args.slo)
        except (OSError, TypeError, ValueError) as exc:
            print(f"ferrolab monitoring: --slo: {exc}", file=sys.stderr)
            return 2
    if not args.force:
        names = [mon.ALERT_RULES_FILE, mon.ALERT_TESTS_FILE, mon.DASHBOARD_FILE]
        names += [mon.SLO_RULES_FILE, mon.SLO_TESTS_FILE] if slos else []
        existing = [os.path.join(args.directory, n) for n in names]
        existing = [p for p in existing if os.path.lexists(p)]
        if existing:
            print(f"ferrolab monitoring: already exists: {', '.join(existing)} (use --force to overwrite)",
                  file=sys.stderr)
            return 1
    try:
        paths = mon.write_monitoring(args.directory, overwrite=args.force, slos=slos)
    except OSError as exc:
        print(f"ferrolab monitoring: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from . import metrics

    if args.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported the same way
            print(f"ferrolab serve: cannot import {module!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        print(f"ferrolab serve: environment variable {args.token_env} is empty or unset", file=sys.stderr)
        return 2
    basic_auth = None
    if args.basic_auth_env:
        entries = os.environ.get(args.basic_auth_env, "").split()
        if not entries or not all(":" in e for e in entries):
            print(
                f"ferrolab serve: environment variable {args.basic_auth_env} must hold 'user:bcrypt_hash' entries",
                file=sys.stderr,
            )
            return 2
        basic_auth = dict(e.split(":", 1) for e in entries)
    if (args.tls_cert is None) != (args.tls_key is None):
        print("ferrolab serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        server = metrics.serve(
            args.host, args.port, token=token, tls_cert=args.tls_cert, tls_key=args.tls_key, basic_auth=basic_auth
        )
    except (OSError, ValueError) as exc:
        print(f"ferrolab serve: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"serving {server.url}/metrics, /health and /ready (Ctrl-C stops)", flush=True)
        done.wait(args.duration)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# --- ferrolab backup -------------------------------------------------------------------------------------------
class _UsageError(Exception):
    """A bad command line: printed, exit status 2."""


def _backup_repo_url(args: argparse.Namespace) -> str:
    url = args.repo or os.environ.get("FERROLAB_REPOSITORY")
    if not url:
        raise _UsageError("no repository: give -r/--repo URL or set FERROLAB_REPOSITORY")
    return url


def _backup_credentials(args: argparse.Namespace, confirm: bool = False) -> tuple[bytes | str | None, str | None]:
    """``(password, key_file)`` for the library: from the options, the environment or a prompt."""
    from .backup import _read_first_line

    if args.password_file and args.key_file:
        raise _UsageError("give either --password-file or --key-file, not both")
    if args.key_file:
        if not os.path.isfile(args.key_file):
            raise _UsageError(f"--key-file: no such file: {args.key_file!r}")
        return None, args.key_file
    source = None
    if args.password_file:
        source = ("--password-file", args.password_file)
    elif os.environ.get("FERROLAB_PASSWORD"):
        return None, None  # the library reads it
    elif os.environ.get("FERROLAB_PASSWORD_FILE"):
        source = ("FERROLAB_PASSWORD_FILE", os.environ["FERROLAB_PASSWORD_FILE"])
    if source is not None:
        try:
            secret = _read_first_line(source[1])
        except OSError as exc:
            raise _UsageError(f"{source[0]}: cannot read {source[1]!r}: {exc.strerror or exc}") from None
        if not secret:
            raise _UsageError(f"{source[0]}: the first line of {source[1]!r} is empty")
        return secret, None
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("enter password for repository: ")
        if not password:
            raise _UsageError("the password is empty")
        if confirm and getpass.getpass("enter password again: ") != password:
            raise _UsageError("the passwords do not match")
        return password, None
    raise _UsageError(
        "no password: give --password-file or --key-file, set FERROLAB_PASSWORD or FERROLAB_PASSWORD_FILE, "
        "or run in a terminal to be asked"
    )


def _backup_open(args: argparse.Namespace) -> Any:
    from .backup import Repository

    url = _backup_repo_url(args)
    password, key_file = _backup_credentials(args)
    return Repository.open(url, password=password, key_file=key_file)


def _backup_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _split_tags(values: Sequence[str]) -> list[str]:
    """``--tag a,b --tag c`` -> ``["a", "b", "c"]`` (commas separate tags, as in restic)."""
    return [t for v in values for t in (x.strip() for x in v.split(",")) if t]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _local_time(snapshot: Any) -> str:
    return snapshot.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _snapshot_rows(snapshots: Sequence[Any], reasons: dict[str, list[str]] | None = None) -> str:
    from .backup import _format_bytes

    header = ["ID", "TIME", "HOST", "TAGS", "FILES", "SIZE", "PATHS"]
    if reasons is not None:
        header.append("REASONS")
    rows = []
    for s in snapshots:
        row = [s.short_id, _local_time(s), s.hostname, ",".join(s.tags), str(s.files), _format_bytes(s.bytes),
               ",".join(s.paths)]
        if reasons is not None:
            row.append(", ".join(reasons.get(s.id, ())))
        rows.append(row)
    return _table(header, rows, right=(4, 5))


def _backup_init(args: argparse.Namespace) -> int:
    from .backup import Repository

    if not 1 <= args.compression <= 22:
        raise _UsageError(f"--compression is {args.compression}; expected a zstd level in 1..22")
    url = _backup_repo_url(args)
    password, key_file = _backup_credentials(args, confirm=True)
    repo = Repository.init(url, password=password, key_file=key_file, compression=args.compression)
    print(f"created repository {repo.id[:8]} at {repo.url}")
    return 0


def _backup_create(args: argparse.Namespace) -> int:
    from .backup import _format_bytes

    missing = [p for p in args.paths if not os.path.lexists(p)]
    if missing:
        raise _UsageError(f"no such file or directory: {', '.join(map(repr, missing))}")
    repo = _backup_open(args)
    snap = repo.backup(args.paths, tags=_split_tags(args.tag), exclude=args.exclude, progress=_backup_progress(args),
                       host=args.host)
    if args.json:
        print(json.dumps(snap.to_dict(), indent=2))
    else:
        print(f"snapshot {snap.short_id} saved: {snap.files} files, {snap.dirs} directories, "
              f"{_format_bytes(snap.bytes)} ({_format_bytes(snap.added_bytes)} added to the repository) "
              f"in {snap.duration:.2f} s")
    if snap.warnings:  # like restic: exit 3 when the snapshot lacks some of the source data
        for warning in snap.warnings:
            print(f"ferrolab backup create: warning: {warning}", file=sys.stderr)
        n = len(snap.warnings)
        items = "1 item" if n == 1 else f"{n} items"
        print(f"ferrolab backup create: snapshot {snap.short_id} created, but {items} could not be backed up and "
              f"{'is' if n == 1 else 'are'} not in it (exit status 3)", file=sys.stderr)
        return 3
    return 0


def _print_damaged(command: str, damaged: Sequence[tuple[str, str]]) -> None:
    for name, why in damaged:
        print(f"ferrolab backup {command}: snapshot {name} cannot be read (damaged?): {why}", file=sys.stderr)


def _backup_list(args: argparse.Namespace) -> int:
    from .backup import _tagged

    repo = _backup_open(args)
    snaps, damaged = repo._load()
    snaps = _tagged(snaps, _split_tags(args.tag))
    if args.json:
        print(json.dumps([s.to_dict() for s in snaps], indent=2))
    else:
        if snaps:
            print(_snapshot_rows(snaps))
        print(f"{len(snaps)} snapshot{'' if len(snaps) == 1 else 's'}")
    if damaged:  # listed on stderr (their tags are unknown), and the exit status says so
        _print_damaged("list", damaged)
        n = len(damaged)
        print(f"ferrolab backup list: {n} snapshot{'' if n == 1 else 's'} cannot be read and "
              f"{'is' if n == 1 else 'are'} not listed; run 'ferrolab backup verify' for details", file=sys.stderr)
        return 1
    return 0


def _backup_restore(args: argparse.Namespace) -> int:
    from .backup import _format_bytes, _parse_at, _select_snapshot

    if args.snapshot is not None and args.at is not None:
        raise _UsageError("give either SNAPSHOT or --at, not both")
    if args.at is not None:
        _parse_at("restore", args.at)  # a bad time is a usage error before any password is asked
    repo = _backup_open(args)
    snaps, damaged = repo._load()
    # a damaged snapshot refuses 'latest' and --at (CorruptionError, exit 1): it may be the one meant
    snap = _select_snapshot("restore", snaps, args.snapshot or "latest", args.at, damaged)
    _print_damaged("restore", damaged)
    counts = repo.restore(snap, target=args.target, include=args.include or None, progress=_backup_progress(args))
    print(f"restored snapshot {snap.short_id} ({_local_time(snap)}) into {os.path.abspath(args.target)}: "
          f"{counts.get('files', 0)} files, {counts.get('dirs', 0)} directories, {counts.get('symlinks', 0)} "
          f"symlinks, {_format_bytes(counts.get('bytes', 0))}")
    return 0


def _backup_verify(args: argparse.Namespace) -> int:
    repo = _backup_open(args)
    report = repo.verify(read_data=not args.metadata_only, progress=_backup_progress(args),
                         expect_latest=args.expect_latest)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.ok else 1


_KEEP_OPTIONS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def _print_prune(result: dict[str, int]) -> None:
    from .backup import _format_bytes

    print(f"pruned: {result.get('packs_deleted', 0)} packs deleted, {result.get('packs_rewritten', 0)} rewritten, "
          f"{result.get('blobs_removed', 0)} blobs removed, {_format_bytes(result.get('bytes_freed', 0))} freed")


def _backup_forget(args: argparse.Namespace) -> int:
    from .backup import _group_by, _group_key, _make_policy

    policy = {k: getattr(args, k) for k in _KEEP_OPTIONS}
    if not _make_policy("forget", **policy, keep_within=args.keep_within):  # bad values: ValueError, exit 2
        raise _UsageError("no policy: give at least one --keep-* option (forgetting every snapshot is refused)")
    keys = _group_by("forget", args.group_by)
    repo = _backup_open(args)
    result = repo.forget(**policy, keep_within=args.keep_within, dry_run=args.dry_run,
                         tags=_split_tags(args.tag) or None, group_by=keys)
    run_prune = args.prune and bool(result.remove) and not args.dry_run
    if args.json:
        pruned = repo.prune(progress=_backup_progress(args)) if run_prune else None
        print(json.dumps({"keep": [s.to_dict() for s in result.keep], "remove": [s.to_dict() for s in result.remove],
                          "reasons": result.reasons, "dry_run": result.dry_run, "prune": pruned}, indent=2))
    else:
        groups: dict[tuple[Any, ...], tuple[list[Any], list[Any]]] = {}
        for s in result.keep:
            groups.setdefault(_group_key(s, keys), ([], []))[0].append(s)
        for s in result.remove:
            groups.setdefault(_group_key(s, keys), ([], []))[1].append(s)
        for key, (keep, remove) in groups.items():
            if keys:
                described = ", ".join(f"{k} {','.join(v) if isinstance(v, tuple) else v}"
                                      for k, v in zip(keys, key, strict=True))
                print(f"snapshots for {described}:")
            print(f"keep {len(keep)} snapshot{'' if len(keep) == 1 else 's'}:")
            if keep:
                print(_snapshot_rows(keep, result.reasons))
            verb = "would remove" if args.dry_run else "remove"
            print(f"{verb} {len(remove)} snapshot{'' if len(remove) == 1 else 's'}:")
            if remove:
                print(_snapshot_rows(remove))
            print()
        n = len(result.remove)
        if args.dry_run:
            print(f"dry run: {n} snapshot{'' if n == 1 else 's'} would be removed, nothing was deleted")
        else:
            print(f"{n} snapshot{'' if n == 1 else 's'} removed")
        if run_prune:
            _print_prune(repo.prune(progress=_backup_progress(args)))
    return 0


def _backup_prune(args: argparse.Namespace) -> int:
    repo = _backup_open(args)
    _print_prune(repo.prune(progress=_backup_progress(args)))
    return 0


def _backup_unlock(args: argparse.Namespace) -> int:
    repo = _backup_open(args)
    n = repo.unlock()
    print(f"removed {n} stale lock{'' if n == 1 else 's'}")
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    import warnings

    from . import FerrolabError

    func = getattr(args, "backup_func", None)
    if func is None:
        args.backup_parser.print_help(sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:  # the library's warnings, printed as ours
            warnings.simplefilter("always", RuntimeWarning)  # e.g. snapshots that cannot be read (forget)
            try:
                return int(func(args))
            finally:
                for w in caught:
                    print(f"ferrolab backup {args.backup_command}: warning: {w.message}", file=sys.stderr)
    except _UsageError as exc:
        print(f"ferrolab backup {args.backup_command}: {exc}", file=sys.stderr)
        return 2
    except FerrolabError as exc:  # BackupError and its subclasses (RepositoryNotFound, WrongPassword, ...)
        print(f"ferrolab backup: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:  # bad arguments found by the library
        print(f"ferrolab backup {args.backup_command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ferrolab backup {args.backup_command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ferrolab backup: interrupted", file=sys.stderr)
        return 130


_BACKUP_DESCRIPTION = """\
Encrypted, deduplicated, compressed snapshots of directories (ferrolab.backup), with restic's retention rules.

The repository is a local directory or s3://bucket/prefix (credentials from the AWS_* variables); give it with
-r/--repo or FERROLAB_REPOSITORY. The password comes from --password-file (its first line), --key-file (a file
whose bytes are the key), FERROLAB_PASSWORD, FERROLAB_PASSWORD_FILE, or is asked for when stdin is a terminal.
Options before the command apply to it as well (ferrolab backup -r DIR list == ferrolab backup list -r DIR).

exit status: 0 ok, 1 failed (verify found damage; list found snapshots that cannot be read; a repository error
such as WrongPassword, LockedError or CorruptionError), 2 usage error (bad arguments, no repository or password),
3 create saved a snapshot but some files or directories could not be read (each is printed on stderr; like
restic)."""

_BACKUP_EPILOG = """\
examples:
  export FERROLAB_REPOSITORY=/srv/backups FERROLAB_PASSWORD_FILE=/etc/ferrolab/password
  ferrolab backup init
  ferrolab backup create /srv/data --tag nightly --exclude '*.tmp'
  ferrolab backup list --tag nightly
  ferrolab backup restore latest --target restored --include runs/42
  ferrolab backup restore --at 2024-05-01T18:00 --target restored
  ferrolab backup forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
  ferrolab backup verify"""


_BACKUP_EXIT = ("exit status: 0 ok, 1 failed (verify found damage; list found snapshots that cannot be read; a "
                "repository error such as WrongPassword, LockedError or CorruptionError), 2 usage error, 3 create "
                "saved a snapshot but some files could not be read.")

_BACKUP_EXAMPLES = {
    "init": ["ferrolab backup -r /srv/backups --password-file /etc/ferrolab/password init"],
    "create": ["ferrolab backup -r /srv/backups create /srv/data --tag nightly --exclude '*.tmp'"],
    "list": ["ferrolab backup -r /srv/backups list", "ferrolab backup -r /srv/backups list --tag nightly --json"],
    "restore": ["ferrolab backup -r /srv/backups restore latest --target restored",
                "ferrolab backup -r /srv/backups restore --at 2024-05-01T18:00 --target restored --include runs/42"],
    "verify": ["ferrolab backup -r /srv/backups verify", "ferrolab backup -r /srv/backups verify --metadata-only"],
    "forget": ["ferrolab backup -r /srv/backups forget --keep-daily 7 --keep-weekly 4 --dry-run",
               "ferrolab backup -r /srv/backups forget --keep-last 10 --prune"],
    "prune": ["ferrolab backup -r /srv/backups prune"],
    "unlock": ["ferrolab backup -r /srv/backups unlock"],
}


def _backup_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    """The repository/password/progress options, on ``backup`` and (without defaults) on each command."""
    default: Any = argparse.SUPPRESS if suppress else None
    p.add_argument("-r", "--repo", metavar="URL", default=default,
                   help="repository: a directory or s3://bucket/prefix (default: $FERROLAB_REPOSITORY)")
    p.add_argument("--password-file", metavar="PATH", default=default,
                   help="read the password from the first line of PATH")
    p.add_argument("--key-file", metavar="PATH", default=default,
                   help="use the bytes of PATH as the key instead of a password")
    p.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="no progress bars (they are drawn on stderr only when it is a terminal)")


def _add_backup_parser(sub: Any) -> None:
    b = sub.add_parser(
        "backup",
        help="encrypted, deduplicated snapshots of directories (init, create, list, restore, verify, forget, ...)",
        description=_BACKUP_DESCRIPTION,
        epilog=_BACKUP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _backup_common(b, suppress=False)
    b.set_defaults(func=_cmd_backup, backup_parser=b, backup_command="")
    bsub = b.add_subparsers(dest="backup_command", metavar="COMMAND")

    def command(name: str, func: Any, summary: str, description: str | None = None) -> argparse.ArgumentParser:
        c = bsub.add_parser(
            name,
            help=summary,
            description=description or summary[:1].upper() + summary[1:] + ".",
            epilog="examples:\n" + "\n".join("  " + e for e in _BACKUP_EXAMPLES[name]) + "\n\n" + _BACKUP_EXIT,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _backup_common(c, suppress=True)
        c.set_defaults(backup_func=func)
        return c

    c = command("init", _backup_init, "create a new repository (asks for the password twice when prompting)")
    c.add_argument("--compression", type=int, default=3, metavar="N",
                   help="zstd level, 1 (fastest) to 22 (smallest); default 3")
    c = command("create", _backup_create, "back up files and directories into a new snapshot",
                "Back up PATHs into a new snapshot. Unchanged files (size, mtime, inode) are not read again; "
                "new data is deduplicated against the whole repository. Files and directories that cannot be read "
                "(permission denied; FIFOs, sockets and devices are not backed up either) are left out: each is "
                "printed on stderr and the exit status is 3 (the snapshot is saved).")
    c.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to back up")
    c.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="tag the snapshot (repeatable; commas separate tags)")
    c.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out paths matching GLOB, e.g. '*.tmp' or '**/__pycache__' (repeatable)")
    c.add_argument("--host", help="host name to record (default: this machine's)")
    c.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    c = command("list", _backup_list, "list the snapshots, oldest first")
    c.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="only snapshots that have all of these tags (repeatable; commas separate tags)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c = command("restore", _backup_restore, "restore a snapshot (or part of it) into a directory")
    c.add_argument("snapshot", nargs="?", metavar="SNAPSHOT",
                   help="'latest' (default), a snapshot id or a unique prefix of at least 4 hex digits")
    c.add_argument("--target", required=True, metavar="DIR", help="directory to restore into (created if needed)")
    c.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="restore only this file or subtree: an original absolute path, or one relative to the "
                   "backed-up directory (repeatable)")
    c.add_argument("--at", metavar="TIME",
                   help="restore the newest snapshot taken at or before TIME (ISO 8601, e.g. 2024-05-01T18:00; "
                   "local time unless it has an offset)")
    c = command("verify", _backup_verify, "check that the repository is intact (exit 1 when it is damaged)",
                "Check the repository's structure and, unless --metadata-only, read and authenticate all data. "
                "Every damaged item is printed; the exit status is 1 when anything is damaged.")
    c.add_argument("--metadata-only", action="store_true", help="skip reading the data packs (much faster)")
    c.add_argument("--expect-latest", metavar="ID",
                   help="full id of the snapshot recorded as the newest: report it as damaged when it is missing "
                   "or another snapshot is newer (finds deleted snapshots and a rolled-back repository)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c = command("forget", _backup_forget, "remove snapshots by a retention policy (restic's --keep-* rules)",
                "Remove the snapshots that the policy does not keep, with restic's rules: snapshots are grouped "
                "(--group-by), and in each group --keep-last N keeps the N newest, --keep-hourly/daily/weekly/"
                "monthly/yearly N the newest of each of the last N hours/days/ISO weeks/months/years (local time) "
                "that have snapshots, --keep-within D all within D of the newest. A snapshot is kept when any rule "
                "keeps it. Only snapshot objects are deleted: use --prune (or 'prune') to free the space.")
    keep_help = {
        "keep_last": "keep the N newest snapshots",
        "keep_hourly": "keep the newest snapshot of each of the last N hours that have snapshots",
        "keep_daily": "keep the newest snapshot of each of the last N days that have snapshots",
        "keep_weekly": "keep the newest snapshot of each of the last N ISO weeks that have snapshots",
        "keep_monthly": "keep the newest snapshot of each of the last N months that have snapshots",
        "keep_yearly": "keep the newest snapshot of each of the last N years that have snapshots",
    }
    for option in _KEEP_OPTIONS:
        c.add_argument("--" + option.replace("_", "-"), type=int, metavar="N", dest=option, help=keep_help[option])
    c.add_argument("--keep-within", metavar="DURATION",
                   help="keep every snapshot within DURATION of the newest, e.g. 2y5m7d3h (years, months, days, hours)")
    c.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="consider only snapshots with all of these tags (repeatable)")
    c.add_argument("--group-by", default="host,paths", metavar="KEYS",
                   help="group snapshots by some of host,paths,tags before applying the policy (default host,paths; "
                   "'' for one group)")
    c.add_argument("--dry-run", action="store_true", help="show what would be removed, remove nothing")
    c.add_argument("--prune", action="store_true", help="run prune afterwards when snapshots were removed")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    command("prune", _backup_prune, "delete data that no snapshot references any more")
    command("unlock", _backup_unlock, "remove stale locks left by processes that died")


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    return bench.main(mode, json_path=args.json, seed=args.seed)


# --- argument types: a bad value is a usage error (exit status 2) -----------------------------------------------
_N = TypeVar("_N", int, float)


def _arg_type(convert: Callable[[str], _N], ok: Callable[[_N], bool], expected: str) -> Callable[[str], _N]:
    """An argparse type: ``convert(text)`` when it converts and ``ok`` holds, else a usage error naming ``expected``."""

    def parse(text: str) -> _N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _arg_type(int, lambda v: v >= 1, "an integer >= 1")
_seed = _arg_type(int, lambda v: v >= 0, "an integer >= 0")


# The longest wait a command takes, in seconds (about 31 years): longer ones overflow the platform's time_t in
# `time.sleep` and `Event.wait`.
MAX_SECONDS = 1e9


_positive_float = _arg_type(float, lambda v: 0 < v <= MAX_SECONDS,
                            f"a positive number of seconds up to {MAX_SECONDS:g}")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return value


_EXIT = "exit status: 0 ok, 1 {failed}, 2 usage error."

_EPILOGS = {
    "demo": "examples:\n  ferrolab demo\n  ferrolab demo --size 100000 --repeat 1\n\n"
    + _EXIT.format(failed="a result differs from NumPy's"),
    "info": "examples:\n  ferrolab info\n"
    "  ferrolab info | python -c 'import json, sys; print(json.load(sys.stdin)[\"simd\"])'\n\n"
    "exit status: 0 ok, 2 usage error.",
    "health": "examples:\n  ferrolab health\n  ferrolab health --config /etc/ferrolab/health.toml --json\n"
    "  ferrolab health --import myapp.checks\n\n"
    "exit status: 0 healthy or warning, 1 unhealthy, 2 usage error, bad configuration or a module that cannot be "
    "imported.",
    "system": "examples:\n  ferrolab system\n  ferrolab system --json\n  ferrolab system --watch 2\n\n"
    + "exit status: 0 ok (also after Ctrl-C ends --watch), 2 usage error.",
    "monitoring": "examples:\n  ferrolab monitoring /etc/prometheus/ferrolab\n"
    "  cd /etc/prometheus/ferrolab && promtool test rules ferrolab-alerts.test.yml\n"
    "  ferrolab monitoring /etc/prometheus/ferrolab --slo slos.json --force\n"
    "  cd /etc/prometheus/ferrolab && promtool test rules ferrolab-slo.test.yml\n\n"
    "slos.json: a list of SLOs (fields of ferrolab.monitoring.SLO), e.g.\n"
    '  [{"name": "api", "objective": 0.999, "period": "30d", "matchers": {"job": "api"}},\n'
    '   {"name": "api-latency", "kind": "latency", "objective": 0.95, "threshold_seconds": 0.25}]\n'
    "(YAML when the file is named *.yml or *.yaml and PyYAML is installed)\n\n"
    + _EXIT.format(failed="a file exists (without --force) or cannot be written")
    + " An --slo file that cannot be read or holds an invalid SLO is a usage error.",
    "serve": "examples:\n  ferrolab serve --port 9464\n"
    "  FL_TOKEN=s3cret ferrolab serve --host 0.0.0.0 --token-env FL_TOKEN\n"
    "  ferrolab serve --import myapp.metrics --duration 60\n\n"
    + _EXIT.format(failed="the port cannot be bound")
    + " A module that cannot be imported or an unset --token-env variable is a usage error.",
    "bench": "examples:\n  ferrolab bench --quick\n  ferrolab bench --json bench.json\n\n"
    + _EXIT.format(failed="a ferrolab result does not match NumPy's"),
}


def _parser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser with its example epilog (kept as written)."""
    return sub.add_parser(name, epilog=_EPILOGS[name], formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferrolab",
        description="ferrolab: native kernels and ops tooling",
        epilog="examples:\n  ferrolab demo\n  ferrolab health --json\n  ferrolab bench --quick\n"
        "  ferrolab COMMAND --help\n\n"
        "exit status: 0 ok, 1 a check failed (unhealthy, mismatch, damaged backup), 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ferrolab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = _parser(sub, "demo", help="run a small instrumented pipeline and compare it with NumPy",
                description="Run a small instrumented pipeline with ferrolab and NumPy, check that the results "
                "match and print the timings.")
    d.add_argument("--size", type=_positive_int, default=2_000_000,
                   help="number of sensor readings (default 2,000,000)")
    d.add_argument("--repeat", type=_positive_int, default=15,
                   help="timed runs per step, alternating with NumPy's, after one untimed run each (best is shown; "
                   "default 15: on a busy machine fewer runs let the scheduler decide a row)")
    d.set_defaults(func=_cmd_demo)
    i = _parser(sub, "info", help="print version, SIMD level, threads and GPU availability as JSON",
                description="Print the version, the SIMD level the kernels run with, the thread count and the GPU "
                "availability as JSON.")
    i.set_defaults(func=_cmd_info)
    h = _parser(
        sub,
        "health",
        help="run the health checks of the default registry (exit 1 when unhealthy)",
        description="Run the checks of ferrolab.health.default_registry() (those that --import modules register) "
        "and those declared by --config, and print the report. With neither, the machine checks memory, disk (/) "
        "and cpu run. Exit status: 0 healthy or warning, 1 unhealthy, 2 usage error or bad configuration.",
    )
    h.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    h.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of [[check]] tables (name, kind, parameters, severity, timeout); see "
        "ferrolab.health.load_config",
    )
    h.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, so that the checks it registers run (repeatable)",
    )
    h.set_defaults(func=_cmd_health)
    sy = _parser(
        sub,
        "system",
        help="print a snapshot of the machine (CPU, load, memory, disks, network, this process, GPUs)",
        description="Print ferrolab.system.snapshot() as a table or JSON. With --watch S, print one every S seconds "
        "(a refreshed table on a terminal, one line per snapshot otherwise, one JSON object per line with --json) "
        "until Ctrl-C, then exit 0.",
    )
    sy.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sy.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="refresh every SECONDS")
    sy.set_defaults(func=_cmd_system)
    m = _parser(
        sub,
        "monitoring",
        help="write the Prometheus alert rules, their promtool tests and the Grafana dashboard into DIR",
        description="Write ferrolab-alerts.yml, ferrolab-alerts.test.yml and ferrolab-dashboard.json into DIR "
        "(created if needed). Check them with: promtool test rules DIR/ferrolab-alerts.test.yml. With --slo FILE, "
        "also ferrolab-slo.yml (recording rules and multi-window, multi-burn-rate alerts for the SLOs in FILE), "
        "ferrolab-slo.test.yml (their promtool tests) and an error-budget panel in the dashboard.",
    )
    m.add_argument("directory", metavar="DIR", help="target directory")
    m.add_argument("--slo", metavar="FILE",
                   help="JSON (or YAML) list of service level objectives; see ferrolab.monitoring.load_slos")
    m.add_argument("--force", action="store_true", help="overwrite files that exist")
    m.set_defaults(func=_cmd_monitoring)
    s = _parser(
        sub,
        "serve",
        help="serve /metrics, /health and /ready until interrupted",
        description="Serve the Prometheus exposition (/metrics), the health report (/health: 200 or 503) and /ready "
        "from native threads until SIGINT/SIGTERM (or --duration seconds). A bearer token over plain HTTP travels in "
        "clear text: use --tls-cert/--tls-key outside a trusted network.",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=9464, help="port (default 9464; 0 picks a free one)")
    s.add_argument(
        "--token-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <token>' with the token read from environment variable VAR",
    )
    s.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain (with --tls-key)")
    s.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    s.add_argument(
        "--basic-auth-env",
        metavar="VAR",
        help="require basic auth; environment variable VAR holds 'user:bcrypt_hash' entries separated by spaces",
    )
    s.add_argument("--duration", type=_positive_float, default=None, help="stop after this many seconds")
    s.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (its metrics and health checks are then served; repeatable)",
    )
    s.set_defaults(func=_cmd_serve)
    _add_backup_parser(sub)
    bn = _parser(
        sub,
        "bench",
        help="benchmark ferrolab's kernels against NumPy on this machine",
        description="Check that ferrolab's results match NumPy's, then time sum, mean, var, dot, axpy (out=), "
        "standardize, quantile, matmul, cdist and adam_step against NumPy on the same inputs (interleaved "
        "repetitions, medians) and print the speed-ups (numpy time / ferrolab time). The default run uses two "
        "sizes per op (about a minute); --quick one size (10-20 s).",
    )
    bn.add_argument("--quick", action="store_true", help="one size per op, about 10-20 s")
    bn.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny inputs: for tests only
    bn.add_argument("--json", metavar="PATH", help="also write the machine, the settings and every row as JSON")
    bn.add_argument("--seed", type=_seed, default=20240601, help="seed of the random inputs (an integer >= 0)")
    bn.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
