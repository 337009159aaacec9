#!/usr/bin/env bash
# Builds the Dockerfile's image where no container registry is reachable, and checks it: the
# Dockerfile's `FROM python:3.11-slim` is replaced by a stand-in made with debootstrap (Debian
# bookworm, whose python3 is 3.11), the build runs under buildah (chroot isolation, vfs
# storage: no daemon, works inside a container; docker format, since OCI has no HEALTHCHECK),
# and the image's HEALTHCHECK command is run against a gateway started from the image on
# loopback: exit 1 before it starts, 0 while it serves (gateway-sendmail's mail reaches its
# outbox meanwhile), 1 again once it stopped. GATEWAY_IMAGE_CHECK_ONLY=1 skips the build.
#
#   sudo bash scripts/build-image.sh [TAG]        (default TAG: localhost/esp-gateway:dev)
#
# Needs root (debootstrap, buildah's chroot), Debian's buildah and debootstrap packages
# (installed when missing), deb.debian.org and the Python package index. The stand-in base is
# kept in buildah's store (localhost/gateway-base:bookworm) and reused on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/esp-gateway:dev}
base=localhost/gateway-base:bookworm
work=${GATEWAY_IMAGE_WORK:-/var/tmp/gateway-image}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || apt-get install -y -q "$tool"
done
mkdir -p "$work"

if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    echo "== stand-in for python:3.11-slim: debootstrap bookworm into $work/rootfs"
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,passwd \
        bookworm "$work/rootfs" http://deb.debian.org/debian
    # The official image's pip installs into /usr/local; Debian's refuses (PEP 668) unless
    # told that this environment is the image's own.
    rm -f "$work"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
    container=$(buildah from scratch)
    buildah add "$container" "$work/rootfs.tar" /
    buildah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \
        --env LANG=C.UTF-8 --cmd python3 "$container"
    buildah commit --rm "$container" "$base"
    rm -rf "$work/rootfs" "$work/rootfs.tar"
fi

if [ "${GATEWAY_IMAGE_CHECK_ONLY:-}" != 1 ]; then
    echo "== buildah build -t $tag (FROM replaced by $base)"
    # The host's CA bundle, so pip trusts what this host's network presents for the index.
    buildah build --format docker --from "$base" --pull=never --network host --layers=false \
        -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
        -t "$tag" -f Dockerfile .
fi
buildah images "$tag"

echo "== the image's HEALTHCHECK against a gateway run from the image (127.0.0.1 only)"
healthcheck=$(buildah inspect --type image "$tag" | python3 -c \
    'import json,sys; print(" ".join(json.load(sys.stdin)["Docker"]["config"]["Healthcheck"]["Test"][1:]))')
echo "HEALTHCHECK CMD $healthcheck"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
conf=$(mktemp -d)
chmod 755 "$conf"
cat >"$conf/gateway.toml" <<EOF
[gateway]
data_dir = "/tmp/gateway-data"
[[smtp.listeners]]
name = "check"
address = "127.0.0.1"
port = $port
tls = "none"
EOF
chmod 644 "$conf/gateway.toml"
container=$(buildah from --pull=never "$tag")
server=
cleanup() {
    if [ -n "$server" ]; then stop_server; fi
    buildah rm "$container" >/dev/null
    rm -rf "$conf"
}
trap cleanup EXIT
run() { buildah run --network host -v "$conf:/etc/gateway/check:ro" \
    --env GATEWAY_CONFIG=/etc/gateway/check/gateway.toml "$container" -- "$@"; }

run gateway --version
set +e
run $healthcheck
before=$?
set -e
echo "HEALTHCHECK with no gateway running: exit $before"
buildah run --network host -v "$conf:/etc/gateway/check:ro" \
    --env GATEWAY_CONFIG=/etc/gateway/check/gateway.toml "$container" -- gateway serve \
    >"$work/serve.log" 2>&1 &
server=$!
# buildah run -> chroot runtime -> chroot exec -> the gateway: SIGTERM goes to the gateway
# itself (its graceful stop), and the chain exits with it.
stop_server() {
    local pid=$server child
    while child=$(ps -o pid= --ppid "$pid" | head -n1 | tr -d ' ') && [ -n "$child" ]; do
        pid=$child
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$server" || true
    server=
}
for _ in $(seq 60); do
    run $healthcheck >/dev/null 2>&1 && break
    sleep 0.5
done
set +e
run $healthcheck
during=$?
set -e
echo "HEALTHCHECK with the gateway serving: exit $during"
printf 'To: someone@example.net\nSubject: from the image\n\nhello\n' \
    | run gateway-sendmail -t -i
echo "gateway-sendmail in the image: exit $?"
run gateway outbox
stop_server
set +e
run $healthcheck
after=$?
set -e
echo "HEALTHCHECK after the gateway stopped: exit $after"
[ "$before" = 1 ] && [ "$during" = 0 ] && [ "$after" = 1 ]
echo "image $tag: OK"
