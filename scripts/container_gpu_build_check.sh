#!/usr/bin/env bash
# Build check of the GPU image (build arg VARIANT=gpu) on a host without a GPU or registry
# access: the CUDA base is replaced by the local Debian + Python base, so every step of the GPU
# stages runs (apt, the pip swap to onnxruntime-gpu + faiss-gpu with CUDA 12 wheels, the import
# check that onnxruntime offers CUDAExecutionProvider) except CUDA itself. On a host that can
# pull nvidia/cuda, build the real thing with `docker build --build-arg VARIANT=gpu .`.
#
# Usage: scripts/container_gpu_build_check.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=scripts/container_env.sh
. "$here/container_env.sh"

IMAGE="${FACEVERIFY_GPU_CHECK_IMAGE:-localhost/faceverify:gpu-check}"

fv_podman_setup
"$here/make_base_image.sh"

fv_log "building VARIANT=gpu with CUDA_BASE_IMAGE=$FACEVERIFY_BASE_IMAGE"
start=$(date +%s)
# shellcheck disable=SC2046
podman build --format docker $(fv_build_net_args) --build-arg VARIANT=gpu \
    --build-arg CUDA_BASE_IMAGE="$FACEVERIFY_BASE_IMAGE" -t "$IMAGE" "$repo" >&2
build_s=$(($(date +%s) - start))

log="$FACEVERIFY_PODMAN_HOME/gpu-check.log"
if ! report=$(podman run --rm --entrypoint python "$IMAGE" -c '
import importlib.metadata as md
import faiss
import onnxruntime as ort

assert "CUDAExecutionProvider" in ort.get_available_providers()
assert hasattr(faiss, "StandardGpuResources"), "faiss is not the GPU build"
names = ("onnxruntime-gpu", "faiss-gpu", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12",
         "nvidia-cuda-nvrtc-cu12", "nvidia-curand-cu12")
print(" ".join(f"{name}=={md.version(name)}" for name in names))
for cpu_build in ("onnxruntime", "faiss-cpu"):
    try:
        md.version(cpu_build)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{cpu_build} is still installed next to its GPU build")
' 2>"$log"); then
    cat "$log" >&2
    fv_die "the GPU image does not import onnxruntime-gpu and faiss-gpu as expected"
fi

cat <<REPORT
gpu build check: OK
  image          $IMAGE (CUDA base replaced by $FACEVERIFY_BASE_IMAGE)
  build time     ${build_s} s
  image size     $(fv_image_size_mb "$IMAGE") MB (without the CUDA base layers)
  packages       $report
REPORT
