# faceverify service image.
#
#   docker build -t faceverify:cpu .                             # CPU image (the default)
#   docker build --build-arg VARIANT=gpu -t faceverify:gpu .    # CUDA 12 (onnxruntime-gpu, faiss-gpu)
#
# Without registry access, make a local base first (scripts/make_base_image.sh) and pass
# --build-arg BASE_IMAGE=localhost/debian-python:bookworm. See docs/deployment.md.
#
# The model pack is mounted at run time on /models (FACEVERIFY_PACK_DIR=/models/$MODEL_PACK);
# --build-arg FETCH_MODEL_PACK=1 downloads and checksum-verifies it into the image instead.

# cpu: onnxruntime + faiss-cpu on BASE_IMAGE. gpu: onnxruntime-gpu + faiss-gpu on CUDA_BASE_IMAGE.
ARG VARIANT=cpu
ARG BASE_IMAGE=python:3.11-slim
# CUDA 12.8 + cuDNN 9: onnxruntime-gpu 1.26.0 is the last release built for CUDA 12 (1.27 and
# later link libcudart.so.13), and faiss-gpu 1.15.1 loads CUDA 12 runtime wheels.
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ============================================================================================
# The operating system and Python of each variant. Both the build and the runtime stage start
# from `python-${VARIANT}`; a builder only builds the one that is named.
# ============================================================================================
FROM ${BASE_IMAGE} AS python-cpu
# BASE_IMAGE may be any Debian-like image; say at once when its Python cannot run the service.
RUN python3 -c "import sys, venv; assert sys.version_info >= (3, 11), 'Python >= 3.11 needed, not ' + sys.version"

FROM ${CUDA_BASE_IMAGE} AS python-gpu
# --no-upgrade: keep a base's own ca-certificates (upgrading it in a build that bind-mounts a
# CA bundle over /etc/ssl/certs/ca-certificates.crt fails).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --no-upgrade \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ============================================================================================
# Build: the virtual environment in /opt/faceverify, copied into a clean runtime below.
# ============================================================================================
FROM python-${VARIANT} AS build
ARG VARIANT
ARG ONNXRUNTIME_GPU_VERSION=1.26.0
ARG FAISS_GPU_VERSION=1.15.1
# faiss-gpu requires the CUDA 12 runtime, cuBLAS and cuRAND wheels and dlopens them itself
# (cuBLAS pulls NVRTC); pinning them to the base image's CUDA 12.8 (cuRAND 10.3.9 ships with
# it) keeps one CUDA minor in the process.
ARG CUDA_RUNTIME_WHEELS="nvidia-cuda-runtime-cu12==12.8.* nvidia-cublas-cu12==12.8.* nvidia-cuda-nvrtc-cu12==12.8.* nvidia-curand-cu12==10.3.9.*"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/faceverify/bin:$PATH
RUN python3 -m venv /opt/faceverify
WORKDIR /src
COPY pyproject.toml ./
# Dependencies come from pyproject.toml, so this layer is rebuilt only when they change.
# The `milvus` extra too, so one image serves either gallery backend (docker-compose.milvus.yml).
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['milvus']))" \
        > requirements.txt \
    && pip install -r requirements.txt \
    && python -c "import cv2, faiss, onnxruntime"
# gpu: the GPU builds replace the CPU ones (they share module names), as in the README.
RUN if [ "${VARIANT}" = gpu ]; then \
        pip uninstall -y onnxruntime faiss-cpu \
        && pip install "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" "faiss-gpu==${FAISS_GPU_VERSION}" \
            ${CUDA_RUNTIME_WHEELS} \
        && python -c "import onnxruntime, faiss; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers(), onnxruntime.get_available_providers()"; \
    elif [ "${VARIANT}" != cpu ]; then \
        echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2 && exit 1; \
    fi

# ============================================================================================
# Runtime: the environment from `build` in a fresh base, no compilers, non-root.
# ============================================================================================
FROM python-${VARIANT} AS runtime
ARG MODEL_PACK=buffalo_l
ARG FETCH_MODEL_PACK=0
ARG PORT=8000
ARG APP_UID=10001
RUN groupadd --gid "${APP_UID}" faceverify \
    && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --home-dir /home/faceverify faceverify \
    && mkdir -p /models /data && chown faceverify:faceverify /models /data
COPY --from=build /opt/faceverify /opt/faceverify
# The service runs from its source folder, as in a checkout: it finds models/catalogue.json
# next to its package. Root owns it; the service user only reads it.
WORKDIR /app
COPY models/catalogue.json models/catalogue.json
COPY service service
COPY deploy/healthcheck.py /usr/local/bin/faceverify-healthcheck
# MALLOC_ARENA_MAX: glibc gives each thread that allocates its own heap arena and rarely
# returns fragmented memory from them; pipeline runs hop between the server's worker threads,
# so a worker's RSS grew with the thread count (1.8 GiB under mixed traffic, about 0.9 GiB
# with 2 arenas; see docs/performance.md).
ENV PATH=/opt/faceverify/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEVERIFY_HOST=0.0.0.0 \
    FACEVERIFY_PORT=${PORT} \
    FACEVERIFY_PACK_DIR=/models/${MODEL_PACK} \
    FACEVERIFY_DATA_DIR=/data
RUN python -m compileall -q service \
    && if [ "${FETCH_MODEL_PACK}" = 1 ]; then \
        python -m service fetch-models "${MODEL_PACK}" --dir /models \
        && chown -R faceverify:faceverify /models; fi
LABEL org.opencontainers.image.title="faceverify" \
      org.opencontainers.image.description="Face verification and identification service" \
      org.opencontainers.image.licenses="Apache-2.0"
USER faceverify
VOLUME ["/models", "/data"]
EXPOSE ${PORT}
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/faceverify-healthcheck"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]
