#!/usr/bin/env bash
# Installs the real components the integration tests start on 127.0.0.1 (Debian packages):
# Prometheus (with promtool), the Prometheus Pushgateway and node_exporter (tests/test_node_exporter.py);
# restic, the peer of benches/bench_backup.py; and binutils, whose objdump the SIMD disassembly check
# (tests/test_simd_build.py) reads the extension with.
# Idempotent; without root or apt-get it only reports what is missing (those tests then skip with a reason, and
# the backup benchmark's smoke runs ferrolab alone, except under CI=true where they fail).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need+=(prometheus-pushgateway)
command -v prometheus-node-exporter >/dev/null 2>&1 || need+=(prometheus-node-exporter)
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v objdump >/dev/null 2>&1 || need+=(binutils)
if [ ${#need[@]} -eq 0 ]; then
    echo "components: all present"
    exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if ! command -v apt-get >/dev/null 2>&1; then
    echo "components: missing ${need[*]} and no apt-get here; their integration tests (or benchmark peers) will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "components: missing ${need[*]}; run as root: apt-get install ${need[*]}" >&2
        exit 0
    fi
fi
echo "components: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# the packages' services are not started here (the tests start their own instances on 127.0.0.1)
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
