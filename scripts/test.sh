#!/usr/bin/env bash
# The README's test command: installs what the test suite needs, then runs lint, types and tests.
# Safe to run again; extra arguments go to pytest (e.g. `bash scripts/test.sh -k smtp`);
# TEST_WORKERS sets how many parallel pytest workers run (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real clients/servers.
missing=()
# swaks needs Net::SSLeay / IO::Socket::SSL for STARTTLS and implicit TLS.
if ! command -v swaks >/dev/null 2>&1 || ! swaks --support 2>&1 | grep -q "=== TLS supported"; then
    missing+=(swaks libnet-ssleay-perl libio-socket-ssl-perl)
fi
# Perl's Mail::DKIM: the independent DKIM verifier (CryptX for its ed25519 support, where present).
if ! perl -MMail::DKIM::Verifier -MCrypt::PK::Ed25519 -e1 >/dev/null 2>&1; then
    missing+=(libmail-dkim-perl libcryptx-perl)
fi
# NSD: the real authoritative DNS server tests/dnsserver.py starts on loopback.
if ! command -v nsd >/dev/null 2>&1 && [ ! -x /usr/sbin/nsd ]; then
    missing+=(nsd)
fi
# A real Redis for the store suite and the multi-node tests (each session starts its own).
if ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi
# strace: the durability tests watch the gateway's fsync, rename and mkdir calls.
if ! command -v strace >/dev/null 2>&1; then
    missing+=(strace)
fi
# iproute2's `ip netns`: the README tour runs in a network namespace of its own (fixed ports).
if ! command -v ip >/dev/null 2>&1; then
    missing+=(iproute2)
fi
# Debian's chromium: the operator console is checked in a real headless browser (Playwright
# drives this binary; `playwright install` is never run).
if [ ! -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi
if ((${#missing[@]})); then
    echo "installing ${missing[*]} (Debian packages used by the tests)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# axe-core (npm): the accessibility checker the hosted-page tests inject into Chromium.
AXE_VERSION=4.14.1
if ! grep -qs "\"version\": \"$AXE_VERSION\"" .npm-tools/node_modules/axe-core/package.json; then
    command -v npm >/dev/null 2>&1 || {
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm
    }
    npm install --silent --no-audit --no-fund --prefix .npm-tools "axe-core@$AXE_VERSION"
fi

bash scripts/install.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check gateway plugins tests bench
.venv/bin/mypy
# Most tests wait on real servers and processes, so they run in parallel (pytest-xdist); the few
# marked `serial` assert latency under load and run afterwards, alone. Exit code 5 means the
# arguments selected no test of that phase.
phase() { .venv/bin/pytest "$@" || { rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }; }
phase -n "${TEST_WORKERS:-3}" -m "not serial" "$@"
phase -m serial "$@"
