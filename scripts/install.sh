#!/usr/bin/env bash
# Installs the gateway into ./.venv from the lock, so every machine runs the versions that were
# tested: `bash scripts/install.sh` for running it (requirements.txt), `bash scripts/install.sh
# test` for the test suite too (requirements-test.txt). Safe to run again. Needs only python3.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=requirements.txt
[ "${1:-}" = test ] && lock=requirements-test.txt
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
python3 -m venv .venv
# Every third-party package comes from the lock, checked against its hashes; the gateway itself
# (and the example plugin the tests load) are then installed without resolving anything else.
{
    "${pip[@]}" --require-hashes -r "$lock"
    "${pip[@]}" --no-deps --no-build-isolation -e .
    if [ "${1:-}" = test ]; then
        "${pip[@]}" --no-deps --no-build-isolation -e tests/example_plugin
    fi
} 2>&1 | { grep -v "^WARNING: Location" || true; }
# mypy cannot follow setuptools' editable import hook, so it finds plugins/ under its installed
# name through this link (pyproject.toml: mypy_path).
mkdir -p .venv/mypy-path
ln -sfn ../../plugins .venv/mypy-path/gateway_plugins
