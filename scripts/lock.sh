#!/usr/bin/env bash
# Regenerates the lock files from pyproject.toml: requirements.txt (what `gateway serve` and the
# Docker image install) and requirements-test.txt (that plus the test tools). Both pin every
# package with its hashes, for every platform and Python >= 3.11 (uv's universal resolution).
#
#   bash scripts/lock.sh                 # re-lock, keeping every pin that still satisfies pyproject
#   bash scripts/lock.sh --upgrade       # move every package to its newest release
#   bash scripts/lock.sh -P redis        # move one package (uv's --upgrade-package)
#
# Bumping the lock is a deliberate commit of its own: run the whole suite on the new lock first.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tools=".venv-lock"
if [ ! -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
compile=("$tools/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes
         --no-header --annotation-style line)
for extra in "" test; do
    out=requirements.txt args=()
    [ -n "$extra" ] && out="requirements-$extra.txt" args=(--extra "$extra")
    # uv reads the existing file as preferences, so pins move only when asked to.
    "${compile[@]}" pyproject.toml requirements/build.in "${args[@]}" "$@" -o "$out"
    sed -i '1i # Locked by scripts/lock.sh from pyproject.toml and requirements/build.in; do not edit.' "$out"
done
echo "wrote requirements.txt and requirements-test.txt"
