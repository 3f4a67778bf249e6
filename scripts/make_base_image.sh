#!/usr/bin/env bash
# Make a local Debian bookworm + Python 3.11 base image for hosts that cannot pull public images.
#
# The Dockerfile starts from `ARG BASE_IMAGE=python:3.11-slim`; where no registry is reachable,
# this script builds an equivalent base with debootstrap and imports it into podman as
# localhost/debian-python:bookworm (override with FACEVERIFY_BASE_IMAGE). Idempotent: an
# existing image is kept, a finished rootfs is reused. Needs root, debootstrap and podman.
#
# Usage: scripts/make_base_image.sh [--force]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/container_env.sh
. "$here/container_env.sh"

ROOTFS="${FACEVERIFY_BASE_ROOTFS:-/var/tmp/faceverify-base/bookworm}"
MIRROR="${FACEVERIFY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# What python:3.11-slim offers that the service needs: an interpreter, venv/ensurepip and CAs.
PACKAGES=python3,python3-venv,ca-certificates

force=0
[ "${1:-}" = "--force" ] && force=1

fv_podman_setup
command -v debootstrap >/dev/null || fv_die "debootstrap is missing: apt-get install -y debootstrap"
[ "$(id -u)" = 0 ] || fv_die "debootstrap needs root"

if [ "$force" = 0 ] && podman image exists "$FACEVERIFY_BASE_IMAGE"; then
    fv_log "base image $FACEVERIFY_BASE_IMAGE exists; pass --force to remake it"
    exit 0
fi

start=$(date +%s)
if [ "$force" = 1 ] || [ ! -f "$ROOTFS/.faceverify-complete" ]; then
    fv_log "debootstrap $SUITE (minbase + $PACKAGES) into $ROOTFS"
    rm -rf "$ROOTFS"
    mkdir -p "$ROOTFS"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2
    cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
    # Slim images carry no apt lists, caches or docs; neither does this one.
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
        "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
    : >"$ROOTFS/etc/resolv.conf"
    touch "$ROOTFS/.faceverify-complete"
fi

fv_log "importing $ROOTFS as $FACEVERIFY_BASE_IMAGE"
tar --exclude=./.faceverify-complete -C "$ROOTFS" -c . |
    podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        - "$FACEVERIFY_BASE_IMAGE" >/dev/null
fv_log "base image ready in $(($(date +%s) - start)) s, $(fv_image_size_mb "$FACEVERIFY_BASE_IMAGE") MB"
