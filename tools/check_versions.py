"""Fails when the versions in Cargo.toml (workspace) and pyproject.toml disagree."""

import pathlib
import sys
import tomllib

root = pathlib.Path(__file__).resolve().parent.parent
cargo = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["version"]
py = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
if cargo != py:
    sys.exit(f"version mismatch: Cargo.toml {cargo} != pyproject.toml {py}")
print(f"versions agree: {py}")
