# syntax=docker/dockerfile:1
# Serving image for SageMaker (and any Docker host): tritonserver + the FastAPI
# front end, started by /usr/local/bin/serve (docker/serve).
#
# Base: NGC release 24.10 ships Triton Inference Server 2.51.0 on Ubuntu 22.04
# with Python 3.10 (see the Triton container release notes, "Triton Inference
# Server Release 24.10"). Its Python-backend stub is built against that python3
# and numpy 1.x, so the serving stack is installed into that same system python.
#
# Supply chain:
# - the base is pinned by digest: BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3@sha256:<digest>,
#   which docker/build-and-push.sh resolves (`docker buildx imagetools inspect`); a reference
#   without a digest is refused;
# - every Python package comes from requirements/serving-py310.lock (hashes required, no
#   dependency resolution at build time), generated from requirements/constraints.txt by `make lock`;
# - the image's SBOM (CycloneDX: Python packages, Debian packages, tritonserver) is built in the
#   `sbom` stage and shipped as /opt/fusion-emotion/sbom.cdx.json.
ARG BASE_IMAGE

FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN [[ "${BASE_IMAGE}" =~ @sha256:[0-9a-f]{64}$ ]] \
    || { echo "BASE_IMAGE must be pinned by digest (<image>:<tag>@sha256:<64 hex>), got '${BASE_IMAGE}'" >&2; exit 1; }

# NVIDIA_DRIVER_CAPABILITIES: `video` makes the NVIDIA runtime mount libnvcuvid/libnvidia-encode,
# without which NVDEC (DALI's GPU video decoder) is unusable inside the container.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    FUSION_EMOTION_MODEL_DIR=/opt/ml/model \
    FUSION_EMOTION_PROFILE=gpu \
    FUSION_EMOTION_TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    SAGEMAKER_BIND_TO_PORT=8080
# SageMaker opens a WebSocket to /invocations-bidirectional-stream only on images that carry this label
# (InvokeEndpointWithBidirectionalStream; docs/sagemaker-streaming.md).
LABEL org.opencontainers.image.base.name="${BASE_IMAGE}" \
      com.amazonaws.sagemaker.capabilities.bidirectional-streaming=true

WORKDIR /opt/fusion-emotion

# The serving set (pyproject extras serving + dali, plus the build backend), exactly as locked.
# No torch, no pytriton: the image has its own tritonserver.
COPY requirements/serving-py310.lock requirements/
RUN python3 -m pip install --no-cache-dir --require-hashes --no-deps -r requirements/serving-py310.lock

COPY pyproject.toml README.md ./
COPY fusion_emotion/ fusion_emotion/
COPY export/ export/
COPY client/ client/
# --no-deps: the lock above is the serving set; --no-build-isolation: build with the locked setuptools
# instead of fetching an unhashed one.
RUN python3 -m pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python3 -c "import fusion_emotion.deploy.supervisor, numpy, av, cv2, onnxruntime, openvino, nvidia.dali; assert numpy.__version__.startswith('1.')"

COPY --chmod=755 docker/serve /usr/local/bin/serve

# Unprivileged runtime user; SageMaker mounts /opt/ml/model read-only, Triton only reads it.
RUN groupadd --system --gid 10001 fusion \
    && useradd --system --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin fusion \
    && mkdir -p /opt/ml/model \
    && chown fusion /opt/ml/model
USER 10001:10001
WORKDIR /home/fusion

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('SAGEMAKER_BIND_TO_PORT', '8080'), timeout=4)"]

# NVIDIA's entrypoint sets up CUDA forward compatibility and then execs the command,
# so SageMaker's `docker run IMAGE serve` runs /usr/local/bin/serve as PID 1.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh"]
CMD ["serve"]


# The image's SBOM, over exactly what the runtime stage installed. The SBOM tools are installed
# here (hashed lock, separate folder) and never reach the final image.
FROM runtime AS sbom
COPY --chown=10001:10001 requirements/sbom-py310.lock /tmp/sbom/
COPY --chown=10001:10001 docker/sbom.sh docker/sbom_image.py /tmp/sbom/
RUN python3 -m pip install --no-cache-dir --require-hashes --no-deps --target /tmp/sbom/tools \
        -r /tmp/sbom/sbom-py310.lock \
    && bash /tmp/sbom/sbom.sh /usr/bin/python3 /tmp/sbom/tools /opt/fusion-emotion/pyproject.toml /tmp/sbom/sbom.cdx.json


FROM runtime AS final
COPY --from=sbom /tmp/sbom/sbom.cdx.json /opt/fusion-emotion/sbom.cdx.json
USER 10001:10001
