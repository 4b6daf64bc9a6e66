"""A throwaway S3 server for tests: benches/_seaweed.py's SeaweedFS, as a pytest helper.

    with seaweedfs() as s3:
        repo = f"s3://{s3['bucket']}/repo"   # s3["endpoint"] is http://127.0.0.1:PORT

Without `weed` the calling test is skipped, or fails when CI=true; a server that does not come up fails it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MISSING


def _load() -> Any:  # benches/_seaweed.py, loaded without touching sys.path
    name = "_bench_seaweed"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "benches" / "_seaweed.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


_sw = _load()
ACCESS_KEY, SECRET_KEY, REGION = _sw.ACCESS_KEY, _sw.SECRET_KEY, _sw.REGION
signed_request = _sw.signed_request
weed_binary = _sw.weed_binary


@contextlib.contextmanager
def seaweedfs(bucket: str = "ferrolab-test", timeout: float = 30.0) -> Iterator[dict[str, str]]:
    """Runs `weed server -s3` with `bucket` created; yields endpoint, bucket, credentials and region."""
    try:
        server = _sw.seaweedfs_server(bucket, timeout)
        info = server.__enter__()
    except _sw.WeedMissing as e:
        pytest.skip(MISSING + str(e))  # a failure under CI=true (tests/conftest.py)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield info
    finally:
        server.__exit__(None, None, None)
