"""The GPU backend where there is no usable GPU, on every machine (CI included).

* The no-GPU contract: the package imports, ``fl.gpu.is_available()`` is False with a reason, ``device="cuda"``
  raises ``DeviceUnavailableError`` (never ``PanicException``), ``auto`` equals ``cpu`` (tests/test_ops_edge.py
  covers every op).
* A stub ``libcuda.so.1`` built here with the system C compiler and put first on ``LD_LIBRARY_PATH`` of a
  subprocess drives every branch of the probe: no device, an old driver, a missing symbol, an unknown error, a
  device found (ops then still refuse: their GPU path is not built), ``FERROLAB_DISABLE_GPU`` and a forked child.
  No case may crash or print a Rust panic.
* Every kernel compiles with NVRTC (the ``nvidia-cuda-nvrtc`` wheel of the test extra) for sm_80 and sm_90 with
  no error and no register spill.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ferrolab as fl
import numpy as np
import pytest
from conftest import MISSING, PLATFORM

STUB_C = r"""
#include <stdlib.h>
#include <string.h>
typedef int CUresult;
static int env(const char* k, int d) { const char* v = getenv(k); return v ? atoi(v) : d; }
CUresult cuInit(unsigned int flags) { return env("STUB_CUINIT", 0); }
CUresult cuDriverGetVersion(int* v) { *v = env("STUB_VERSION", 13000); return 0; }
CUresult cuGetErrorName(CUresult e, const char** s) { *s = "STUB_ERROR"; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = env("STUB_COUNT", 1); return 0; }
CUresult cuDeviceGet(int* d, int i) { *d = i; return 0; }
CUresult cuDeviceGetName(char* name, int len, int dev) { strncpy(name, "Stub GPU", len); return 0; }
CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
    /* 75/76: compute capability major/minor, 16: multiprocessors */
    *v = attr == 75 ? 9 : attr == 76 ? 0 : attr == 16 ? 132 : 1;
    return 0;
}
#ifndef STUB_NO_TOTALMEM
CUresult cuDeviceTotalMem_v2(size_t* b, int dev) { *b = (size_t)80 << 30; return 0; }
#endif
"""
# every other driver function ferrolab calls: present, answering CUDA_ERROR_NOT_SUPPORTED (801)
IMPLEMENTED = {"cuInit", "cuDriverGetVersion", "cuGetErrorName", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName",
               "cuDeviceGetAttribute", "cuDeviceTotalMem_v2"}
STUB_C += "".join(
    f"CUresult {name}(void) {{ return 801; }}\n"
    for name in fl._core._gpu_probe()["driver_symbols"]
    if name not in IMPLEMENTED
)

PROBE = r"""
import json, os, sys
import numpy as np
import ferrolab as fl
info = fl.gpu.info()
out = {"info": info}
try:
    fl.ops.sum(np.ones(4), device="cuda")
    out["cuda"] = "ran"
except fl.DeviceUnavailableError as e:
    out["cuda"] = str(e)
    out["cause"] = str(e.__cause__) if e.__cause__ else None
out["auto"] = float(fl.ops.sum(np.arange(4.0), device="auto"))
if os.environ.get("PROBE_FORK"):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, fl.gpu.info()["reason"].encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    out["child_reason"] = os.read(r, 4096).decode()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip(MISSING + "a C compiler (cc), to build the stub libcuda.so.1")
    root = tmp_path_factory.mktemp("stub-cuda")
    (root / "stub.c").write_text(STUB_C)
    out = {}
    for name, flags in (("full", []), ("no_totalmem", ["-DSTUB_NO_TOTALMEM"])):
        d = root / name
        d.mkdir()
        subprocess.run(
            [cc, "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"), str(root / "stub.c"), *flags],
            check=True,
            timeout=120,
        )
        # cudarc tries "libcuda.so" before "libcuda.so.1": both must be the stub
        os.symlink("libcuda.so.1", d / "libcuda.so")
        out[name] = d
    return out


def probe(stub: Path | None, **env: str) -> dict:
    import json

    e = {k: v for k, v in os.environ.items() if not k.startswith(("STUB_", "FERROLAB_DISABLE_GPU"))}
    if stub is not None:
        e["LD_LIBRARY_PATH"] = f"{stub}:{e.get('LD_LIBRARY_PATH', '')}"
    e.update(env)
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=e)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "panicked" not in r.stderr and "PanicException" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def assert_unavailable(out: dict, reason: str) -> None:
    info = out["info"]
    assert info["available"] is False
    assert re.search(reason, info["reason"]), info["reason"]
    assert out["cuda"] == "sum(): device 'cuda' is not available: " + info["reason"]
    assert out["auto"] == 6.0


def test_no_gpu_contract_in_this_process() -> None:
    info = fl.gpu.info()
    assert sorted(info) == ["available", "breaker", "devices", "driver_version", "reason"]
    # available exactly when there is no reason against it (False with a reason on a machine without a usable GPU;
    # True on one with a GPU, where this test also runs)
    assert fl.gpu.is_available() is info["available"] is (info["reason"] == "")
    with pytest.raises(fl.DeviceUnavailableError, match=r"asarray\(\): device 'cuda' is not available"):
        fl.gpu.asarray(np.ones(3))
    with pytest.raises(fl.DeviceUnavailableError, match=r"from_dlpack\(\)"):
        fl.gpu.from_dlpack(np.ones(3))
    with pytest.raises(fl.DeviceUnavailableError, match=r"sum\(\): device 'cuda:3'"):
        fl.ops.sum(np.ones(3), device="cuda:3")


def test_no_driver() -> None:
    if ctypes.util.find_library("cuda"):
        pytest.skip(PLATFORM + "this machine has an NVIDIA driver library; the no-driver case needs one without")
    out = probe(None)
    assert_unavailable(out, r"^no NVIDIA driver: libcuda.so.1 could not be loaded \(.+\)")
    assert out["info"]["driver_version"] is None and out["info"]["devices"] == []


def test_stub_driver_without_device(stubs: dict[str, Path]) -> None:
    out = probe(stubs["full"], STUB_CUINIT="100")  # CUDA_ERROR_NO_DEVICE
    assert_unavailable(out, r"^no CUDA device")
    out = probe(stubs["full"], STUB_COUNT="0")
    assert_unavailable(out, r"^no CUDA device")


def test_stub_driver_too_old(stubs: dict[str, Path]) -> None:
    out = probe(stubs["full"], STUB_VERSION="12040")
    assert_unavailable(out, r"supports CUDA 12\.4; ferrolab's GPU backend needs a driver for CUDA 13\.0 or newer")


def test_stub_driver_unknown_error(stubs: dict[str, Path]) -> None:
    out = probe(stubs["full"], STUB_CUINIT="999")  # CUDA_ERROR_UNKNOWN
    assert_unavailable(out, r"^cuInit failed: CUDA_ERROR_UNKNOWN")


def test_stub_driver_missing_symbol(stubs: dict[str, Path]) -> None:
    out = probe(stubs["no_totalmem"])
    assert_unavailable(out, r"lacks cuDeviceTotalMem_v2 \(a driver for CUDA 13\.0 or newer is needed\)")


def test_stub_device_found_but_ops_refuse(stubs: dict[str, Path]) -> None:
    out = probe(stubs["full"])
    info = out["info"]
    assert info["driver_version"] == 13000
    assert info["devices"] == [
        {
            "index": 0,
            "name": "Stub GPU",
            "compute_capability": [9, 0],
            "total_memory": 80 << 30,
            "multiprocessors": 132,
        }
    ]
    # a GPU is there: is_available() says so
    assert info["available"] is True and info["reason"] == ""
    # the stub cannot make a context: the call fails with the CUDA error as its cause, and never runs on the CPU
    assert out["cuda"].startswith("sum(): device 'cuda' is not available: the GPU failed: "), out["cuda"]
    assert "cuDevicePrimaryCtxRetain failed: CUDA_ERROR_NOT_SUPPORTED" in out["cuda"], out["cuda"]
    assert out["cause"] == "CUDA_ERROR_NOT_SUPPORTED"
    assert out["auto"] == 6.0


def test_disabled_by_environment(stubs: dict[str, Path]) -> None:
    out = probe(stubs["full"], FERROLAB_DISABLE_GPU="1")
    assert_unavailable(out, r"^disabled by FERROLAB_DISABLE_GPU$")
    assert out["info"]["devices"] == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason=PLATFORM + "no fork")
def test_forked_child_reports_unavailable(stubs: dict[str, Path]) -> None:
    out = probe(stubs["full"], PROBE_FORK="1")
    assert out["info"]["devices"], out
    assert "is a fork of one that initialised CUDA" in out["child_reason"], out["child_reason"]


KERNELS = {
    f"fl_{op}_{dt}"
    for op in ("sum", "sumsq", "dot", "minmax", "argmin", "argmax", "moments", "axpy", "fma", "scale",
               "standardize", "clip", "adam")
    for dt in ("f32", "f64")
} | {"fl_sum_partials", "fl_minmax_partials", "fl_argmin_partials", "fl_argmax_partials", "fl_moments_partials"}


@pytest.fixture(scope="module")
def nvrtc_available() -> None:
    try:
        fl.gpu.compile_kernels("sm_90")
    except RuntimeError as e:
        if "was not found" in str(e):
            pytest.skip(MISSING + "NVRTC (pip install nvidia-cuda-nvrtc, in the test extra)")
        raise


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_without_spills(nvrtc_available: None, arch: str) -> None:
    report = fl.gpu.compile_kernels(arch)
    assert report["arch"] == arch
    assert report["nvrtc"]["version"][0] == 13
    assert report["cubin"][:4] == b"\x7fELF"  # a CUBIN is an ELF image
    names = {k["name"] for k in report["kernels"]}
    assert names == KERNELS, sorted(names ^ KERNELS)
    for k in report["kernels"]:
        assert k["spill_stores"] == 0 and k["spill_loads"] == 0, (arch, k)
        assert 0 < k["registers"] <= 64, (arch, k)
    assert "error" not in report["log"].lower(), report["log"]


def test_a_compile_error_carries_the_log(nvrtc_available: None) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)compiling the kernels for sm_1 failed.*invalid value"):
        fl.gpu.compile_kernels("sm_1")


def test_nvrtc_not_found_names_the_package() -> None:
    # a fresh interpreter whose only NVRTC candidate folder is empty, where the loader knows no NVRTC
    code = textwrap.dedent(
        """
        import ferrolab as fl, ferrolab.gpu as g
        g._nvrtc_dirs = lambda: []
        try:
            fl.gpu.compile_kernels()
        except RuntimeError as e:
            print(e)
        """
    )
    if ctypes.util.find_library("nvrtc"):
        pytest.skip(PLATFORM + "the dynamic loader finds an NVRTC on this machine")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pip install nvidia-cuda-nvrtc" in r.stdout, r.stdout
