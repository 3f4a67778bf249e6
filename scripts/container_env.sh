# shellcheck shell=bash
# Podman settings shared by the container scripts; source it, do not run it.
#
# Hosts without a Docker engine can build and run the image with podman as root. Sandboxed hosts
# often lack systemd cgroups and permission to raise rlimits, so this file points podman at its own
# containers.conf (cgroupfs, no default ulimits, runc, file event log) and at a storage folder
# outside the repository. Everything lives under FACEVERIFY_PODMAN_HOME (default
# /var/tmp/faceverify-podman); every function is idempotent.

FACEVERIFY_PODMAN_HOME="${FACEVERIFY_PODMAN_HOME:-/var/tmp/faceverify-podman}"
FACEVERIFY_BASE_IMAGE="${FACEVERIFY_BASE_IMAGE:-localhost/debian-python:bookworm}"
# The host's CA bundle is mounted into builds so that pip and apt inside them trust the same
# (possibly intercepting) certificate authorities as the host.
FACEVERIFY_CA_BUNDLE="${FACEVERIFY_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

fv_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

fv_die() {
    fv_log "error: $*"
    exit 1
}

# Write containers.conf and storage.conf once and export the variables podman (and
# podman-compose, which calls podman) read them from.
fv_podman_setup() {
    command -v podman >/dev/null || fv_die "podman is missing: apt-get install -y podman runc"
    command -v runc >/dev/null || fv_die "runc is missing: apt-get install -y runc"
    mkdir -p "$FACEVERIFY_PODMAN_HOME/storage" "$FACEVERIFY_PODMAN_HOME/run" "$FACEVERIFY_PODMAN_HOME/tmp"
    local conf="$FACEVERIFY_PODMAN_HOME/containers.conf"
    local storage="$FACEVERIFY_PODMAN_HOME/storage.conf"
    if [ ! -f "$conf" ]; then
        cat >"$conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
    fi
    if [ ! -f "$storage" ]; then
        cat >"$storage" <<EOF
[storage]
driver = "overlay"
graphroot = "$FACEVERIFY_PODMAN_HOME/storage"
runroot = "$FACEVERIFY_PODMAN_HOME/run"
EOF
    fi
    export CONTAINERS_CONF="$conf"
    export CONTAINERS_STORAGE_CONF="$storage"
    export TMPDIR="$FACEVERIFY_PODMAN_HOME/tmp"
}

# Build arguments that give a build the host's network and CA bundle (see docs/deployment.md).
fv_build_net_args() {
    printf '%s\n' --network host -v "$FACEVERIFY_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"
}

# Print the size of an image in MB.
fv_image_size_mb() {
    podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f", $1 / 1000000}'
}

# Wait until URL answers 2xx, at most $2 seconds.
fv_wait_http() {
    local url="$1" limit="$2" start
    start=$(date +%s)
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        if [ $(($(date +%s) - start)) -ge "$limit" ]; then
            return 1
        fi
        sleep 1
    done
}
