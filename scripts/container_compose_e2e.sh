#!/usr/bin/env bash
# End-to-end check of docker-compose.yml with podman-compose: bring the stack up with
# deploy/compose.local.yml (locally built faceverify and Prometheus images), the real model pack
# mounted as the models folder, and check that faceverify is healthy and that Prometheus scrapes
# it (target up, faceverify_ series queryable). Takes the stack down (volumes too) on exit.
#
# Usage: scripts/container_compose_e2e.sh [--rebuild]
#   --rebuild  rebuild the faceverify image even if it exists (scripts/container_e2e.sh builds it)
# Env:   FACEVERIFY_TEST_ASSETS, FACEVERIFY_E2E_PACK (as in scripts/container_e2e.sh)
#        FACEVERIFY_COMPOSE_VENV  where podman-compose is installed (default
#                                 /var/tmp/faceverify-compose-venv, created if missing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=scripts/container_env.sh
. "$here/container_env.sh"

ASSETS="${FACEVERIFY_TEST_ASSETS:-$repo/../shared/assets}"
PACK="$(realpath "${FACEVERIFY_E2E_PACK:-$ASSETS/models/scrfd500m_mbf128}")"
COMPOSE_VENV="${FACEVERIFY_COMPOSE_VENV:-/var/tmp/faceverify-compose-venv}"
# podman-compose 1.6.0: the first release that reads `env_file: {path, required}` and
# `depends_on` conditions as docker compose v2 does; Debian's 1.0.3 does not.
PODMAN_COMPOSE_VERSION=1.6.0
PROJECT=faceverify-e2e
FACEVERIFY_IMAGE_TAG=localhost/faceverify:cpu
PROMETHEUS_IMAGE_TAG=localhost/faceverify-prometheus:debian
STARTUP_LIMIT_S=120
# deploy/prometheus/prometheus.yml scrapes every 15 s: allow a few scrapes.
SCRAPE_LIMIT_S=60

rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1
[ -d "$PACK" ] || fv_die "$PACK is missing: set FACEVERIFY_TEST_ASSETS to the test assets folder"
command -v curl >/dev/null || fv_die "curl is missing: apt-get install -y curl"

fv_podman_setup
"$here/make_base_image.sh"

if [ ! -x "$COMPOSE_VENV/bin/podman-compose" ]; then
    fv_log "installing podman-compose $PODMAN_COMPOSE_VERSION into $COMPOSE_VENV"
    python3 -m venv "$COMPOSE_VENV"
    "$COMPOSE_VENV/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION"
fi

# shellcheck disable=SC2046
if [ "$rebuild" = 1 ] || ! podman image exists "$FACEVERIFY_IMAGE_TAG"; then
    fv_log "building $FACEVERIFY_IMAGE_TAG"
    podman build --format docker $(fv_build_net_args) \
        --build-arg VARIANT=cpu --build-arg BASE_IMAGE="$FACEVERIFY_BASE_IMAGE" \
        -t "$FACEVERIFY_IMAGE_TAG" "$repo" >&2
fi
# shellcheck disable=SC2046
if [ "$rebuild" = 1 ] || ! podman image exists "$PROMETHEUS_IMAGE_TAG"; then
    fv_log "building $PROMETHEUS_IMAGE_TAG (Debian's prometheus package)"
    podman build --format docker $(fv_build_net_args) \
        --build-arg BASE_IMAGE="$FACEVERIFY_BASE_IMAGE" -t "$PROMETHEUS_IMAGE_TAG" \
        "$repo/deploy/prometheus" >&2
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
FACEVERIFY_MODELS="$(dirname "$PACK")"
FACEVERIFY_MODEL_PACK="$(basename "$PACK")"
FACEVERIFY_PUBLISH_PORT="$(free_port)"
PROMETHEUS_PUBLISH_PORT="$(free_port)"
export FACEVERIFY_MODELS FACEVERIFY_MODEL_PACK FACEVERIFY_PUBLISH_PORT PROMETHEUS_PUBLISH_PORT
compose() {
    (cd "$repo" && "$COMPOSE_VENV/bin/podman-compose" -p "$PROJECT" \
        -f docker-compose.yml -f deploy/compose.local.yml "$@")
}
cleanup() {
    compose logs >"$FACEVERIFY_PODMAN_HOME/$PROJECT.log" 2>&1 || true
    compose down -v >/dev/null 2>&1 || true
}
trap cleanup EXIT

fv_log "podman-compose up (faceverify on :$FACEVERIFY_PUBLISH_PORT, prometheus on :$PROMETHEUS_PUBLISH_PORT)"
up_start=$(date +%s)
compose up -d >&2
service="http://127.0.0.1:$FACEVERIFY_PUBLISH_PORT"
prometheus="http://127.0.0.1:$PROMETHEUS_PUBLISH_PORT"

fv_wait_http "$service/readyz" "$STARTUP_LIMIT_S" || fv_die "faceverify not ready within ${STARTUP_LIMIT_S} s"
fv_log "faceverify ready after $(($(date +%s) - up_start)) s: $(curl -fsS "$service/readyz")"
container=$(podman ps --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=faceverify" --format '{{.Names}}' | head -1)
[ -n "$container" ] || fv_die "no faceverify container in project $PROJECT"
# Podman runs HEALTHCHECKs from systemd timers; where there is no systemd, run it once by hand.
podman healthcheck run "$container" >/dev/null || fv_die "faceverify HEALTHCHECK reports unhealthy"
fv_log "faceverify HEALTHCHECK: $(podman inspect --format '{{.State.Health.Status}}' "$container")"

# One request of each kind so that labelled series exist.
photos="$ASSETS/images/face_recognition/obama"
curl -fsS -F "image1=@$photos/obama.jpg" -F "image2=@$photos/obama2.jpg" "$service/verify" >/dev/null

# prometheus_query EXPR: print the number of series the instant query returns.
prometheus_query() {
    curl -fsS --get --data-urlencode "query=$1" "$prometheus/api/v1/query" |
        python3 -c 'import json, sys; print(len(json.load(sys.stdin)["data"]["result"]))'
}
fv_wait_http "$prometheus/-/ready" "$STARTUP_LIMIT_S" || fv_die "Prometheus not ready"
scrape_start=$(date +%s)
until [ "$(prometheus_query 'up{job="faceverify"} == 1')" = 1 ] &&
    [ "$(prometheus_query 'faceverify_requests_total{route="/verify"}')" -ge 1 ]; do
    if [ $(($(date +%s) - scrape_start)) -ge "$SCRAPE_LIMIT_S" ]; then
        curl -fsS "$prometheus/api/v1/targets" >&2 || true
        fv_die "Prometheus did not scrape faceverify within ${SCRAPE_LIMIT_S} s"
    fi
    sleep 2
done
fv_log "Prometheus: target faceverify up, faceverify_requests_total{route=\"/verify\"} present"
series=$(curl -fsS "$prometheus/api/v1/label/__name__/values" |
    python3 -c 'import json, sys; print(sum(n.startswith("faceverify_") for n in json.load(sys.stdin)["data"]))')

cat <<EOF
compose e2e: OK
  stack          docker-compose.yml + deploy/compose.local.yml via podman-compose $PODMAN_COMPOSE_VERSION
  faceverify     ready and healthy, pack $FACEVERIFY_MODEL_PACK mounted read-only
  prometheus     target up{job="faceverify"} == 1, $series faceverify_ metric names queryable
  grafana        not started here (no offline image); provisioning checked by tests/deploy
EOF
