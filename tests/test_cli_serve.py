"""`ferrolab serve`: serves /metrics, /health and /ready until SIGTERM/SIGINT, then exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request


def _start(*extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    # stderr goes to a file: a pipe nobody reads while the server runs could fill up (logs) and block the server
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferrolab", "serve", "--port", "0", "--duration", "120", *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(https?://127\.0\.0\.1:\d+)/metrics", line)
        if not m:
            proc.kill()
            proc.communicate(timeout=60)
            err.seek(0)
            raise AssertionError(f"no URL in {line!r}; stderr: {err.read()}")
    return proc, m.group(1)


def test_serve_answers_and_stops_on_sigterm() -> None:
    proc, url = _start()
    try:
        with urllib.request.urlopen(url + "/ready", timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            assert "ferrolab_memory_usage_bytes" in r.read().decode()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)  # reaps it and closes the pipes


def test_serve_token_from_environment() -> None:
    proc, url = _start("--token-env", "FL_TEST_TOKEN", env={"FL_TEST_TOKEN": "abc123"})
    try:
        req = urllib.request.Request(url + "/ready")
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError("a request without the token was served")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        req = urllib.request.Request(url + "/ready", headers={"Authorization": "Bearer abc123"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)  # reaps it and closes the pipes


def test_serve_usage_errors_exit_2() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ferrolab", "serve", "--token-env", "FL_SURELY_UNSET_VAR", "--duration", "1"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "FL_SURELY_UNSET_VAR"},
        timeout=120,
    )
    assert r.returncode == 2 and "FL_SURELY_UNSET_VAR" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "ferrolab", "serve", "--import", "no_such_module_xyz", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no_such_module_xyz" in r.stderr


def test_serve_tls_and_basic_auth(tmp_path) -> None:
    import base64
    import shutil
    import ssl

    import pytest
    from conftest import MISSING

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip(f"{MISSING}openssl (Debian package openssl); needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # bcrypt (cost 4, fast for a test) of "pw"
    users = "scraper:$2b$04$ADVAhG9OtdL/JQ6.J1SCvO.ilvPPoVZQwSRnfaHfoHIBpKZMrA0Um"
    proc, url = _start(
        "--tls-cert", str(cert), "--tls-key", str(key), "--basic-auth-env", "FL_TEST_USERS",
        env={"FL_TEST_USERS": users},
    )
    try:
        assert url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False  # the certificate names localhost; the URL says 127.0.0.1 (also in its SANs)
        try:
            urllib.request.urlopen(url + "/ready", timeout=30, context=ctx)
            raise AssertionError("a request without credentials was served")
        except urllib.error.HTTPError as e:
            assert e.code == 401
            e.close()
        auth = base64.b64encode(b"scraper:pw").decode()
        req = urllib.request.Request(url + "/ready", headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
