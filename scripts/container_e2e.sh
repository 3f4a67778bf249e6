#!/usr/bin/env bash
# End-to-end check of the CPU image with podman: build it, run it with a real model pack mounted
# read-only, and check /healthz, /readyz, the image's HEALTHCHECK, /verify on real photos
# (same person matches, different people do not) and a gallery round trip that writes to the
# /data volume as the image's non-root user. Prints build time and image size; removes the
# container on exit. Too slow for the test suite (a cold build downloads ~250 MB of wheels).
#
# Usage: scripts/container_e2e.sh [--no-cache]
#   --no-cache  build every layer again (a cold build, to measure it)
# Env:   FACEVERIFY_TEST_ASSETS  assets folder (default: <repo>/../shared/assets)
#        FACEVERIFY_E2E_PACK     pack folder (default: $FACEVERIFY_TEST_ASSETS/models/scrfd500m_mbf128)
#        FACEVERIFY_E2E_IMAGE    image tag (default: localhost/faceverify:cpu)
#        FACEVERIFY_E2E_PORT     host port (default: a free one)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=scripts/container_env.sh
. "$here/container_env.sh"

ASSETS="${FACEVERIFY_TEST_ASSETS:-$repo/../shared/assets}"
PACK="${FACEVERIFY_E2E_PACK:-$ASSETS/models/scrfd500m_mbf128}"
PHOTOS="$ASSETS/images/face_recognition"
IMAGE="${FACEVERIFY_E2E_IMAGE:-localhost/faceverify:cpu}"
PORT="${FACEVERIFY_E2E_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
CONTAINER="faceverify-e2e-$$"
# Start-up loads and hashes the pack, then builds the gallery index: seconds on 2 cores.
STARTUP_LIMIT_S=120

cache_args=()
[ "${1:-}" = "--no-cache" ] && cache_args=(--no-cache)

for f in "$PACK" "$PHOTOS/obama/obama.jpg" "$PHOTOS/obama/obama2.jpg" "$PHOTOS/biden/biden.jpg"; do
    [ -e "$f" ] || fv_die "$f is missing: set FACEVERIFY_TEST_ASSETS to the test assets folder"
done
command -v curl >/dev/null || fv_die "curl is missing: apt-get install -y curl"

fv_podman_setup
"$here/make_base_image.sh"

cleanup() {
    if podman container exists "$CONTAINER" 2>/dev/null; then
        podman logs "$CONTAINER" >"$FACEVERIFY_PODMAN_HOME/$CONTAINER.log" 2>&1 || true
        podman rm -f -v "$CONTAINER" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

fv_log "building $IMAGE from $FACEVERIFY_BASE_IMAGE"
build_start=$(date +%s)
# --format docker keeps the HEALTHCHECK instruction (the OCI image format has no field for it).
# VARIANT is passed although it is the default: buildah 1.28 (podman 4.3) resolves
# `FROM python-${VARIANT}` only from a --build-arg, not from the ARG's default.
# shellcheck disable=SC2046
podman build --format docker "${cache_args[@]}" $(fv_build_net_args) \
    --build-arg VARIANT=cpu --build-arg BASE_IMAGE="$FACEVERIFY_BASE_IMAGE" -t "$IMAGE" "$repo" >&2
build_s=$(($(date +%s) - build_start))
size_mb=$(fv_image_size_mb "$IMAGE")
fv_log "built in ${build_s} s, image size ${size_mb} MB"

fv_log "running $IMAGE on 127.0.0.1:$PORT with $PACK mounted read-only"
podman run -d --name "$CONTAINER" -p "127.0.0.1:$PORT:8000" \
    -v "$PACK:/models/pack:ro" -e FACEVERIFY_PACK_DIR=/models/pack "$IMAGE" >/dev/null
base="http://127.0.0.1:$PORT"
run_start=$(date +%s)
if ! fv_wait_http "$base/healthz" "$STARTUP_LIMIT_S"; then
    podman logs "$CONTAINER" 2>&1 | tail -30 >&2
    fv_die "/healthz did not answer within ${STARTUP_LIMIT_S} s"
fi
startup_s=$(($(date +%s) - run_start))
fv_log "/healthz answers after ${startup_s} s: $(curl -fsS "$base/healthz")"
fv_log "/readyz: $(curl -fsS "$base/readyz")"
podman healthcheck run "$CONTAINER" >/dev/null || fv_die "the image's HEALTHCHECK reports unhealthy"
fv_log "HEALTHCHECK: $(podman inspect --format '{{.State.Health.Status}}' "$CONTAINER")"

# verify A B EXPECTED_MATCH: POST /verify and check the decision.
verify() {
    local body
    body=$(curl -fsS -F "image1=@$1" -F "image2=@$2" "$base/verify")
    python3 - "$body" "$3" "$(basename "$1")" "$(basename "$2")" <<'EOF'
import json
import sys

body, expected, a, b = json.loads(sys.argv[1]), sys.argv[2] == "true", sys.argv[3], sys.argv[4]
print(f"/verify {a} vs {b}: match={body['match']} similarity={body['similarity']:.3f} "
      f"threshold={body['threshold']}", file=sys.stderr)
sys.exit(0 if body["match"] is expected else 1)
EOF
}
verify "$PHOTOS/obama/obama.jpg" "$PHOTOS/obama/obama2.jpg" true ||
    fv_die "obama.jpg and obama2.jpg should match"
verify "$PHOTOS/obama/obama.jpg" "$PHOTOS/biden/biden.jpg" false ||
    fv_die "obama.jpg and biden.jpg should not match"

# Gallery round trip: enrol one photo, identify another of the same person. The gallery lives
# on the /data volume, so this proves the non-root user can write there.
identity_id=$(curl -fsS -H 'Content-Type: application/json' -d '{"name": "obama"}' \
    "$base/identities" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
curl -fsS -F "image=@$PHOTOS/obama/obama.jpg" "$base/identities/$identity_id/faces" >/dev/null ||
    fv_die "enrolling obama.jpg failed"
identified=$(curl -fsS -F "image=@$PHOTOS/obama/obama2.jpg" "$base/identify")
python3 - "$identified" "$identity_id" <<'EOF' || fv_die "/identify did not find the enrolled identity"
import json
import sys

body, wanted = json.loads(sys.argv[1]), sys.argv[2]
result = body["results"][0]
best = result["candidates"][0]
print(f"/identify obama2.jpg: identity={result['identity']} best candidate {best['name']} "
      f"similarity={best['similarity']:.3f}", file=sys.stderr)
sys.exit(0 if result["identity"] and result["identity"]["id"] == wanted else 1)
EOF

scraped=$(curl -fsS "$base/metrics" | grep -c '^faceverify_' || true)
[ "$scraped" -gt 0 ] || fv_die "/metrics exports no faceverify_ samples"

cat <<EOF
container e2e: OK
  image          $IMAGE (base $FACEVERIFY_BASE_IMAGE)
  build time     ${build_s} s
  image size     ${size_mb} MB
  start-up       ${startup_s} s to /healthz
  checks         /healthz, /readyz, HEALTHCHECK, /verify match + no match, enrol + identify, /metrics ($scraped samples)
EOF
