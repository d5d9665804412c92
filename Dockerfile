# syntax=docker/dockerfile:1
# Serving image for SageMaker (and any Docker host): tritonserver + the FastAPI
# front end, started by /usr/local/bin/serve (docker/serve).
#
# Base: NGC release 24.10 ships Triton Inference Server 2.51.0 (see the Triton
# container release notes, "Triton Inference Server Release 24.10"). The model
# repository targets 2.51: its Python-backend stub is built against this image's
# python3 (3.10) and numpy 1.x, so the serving stack is installed into that same
# system python, and numpy stays < 2.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# onnxruntime-gpu: 1.19+ wheels are CUDA 12 builds (this image has CUDA 12.6);
# it also carries the CPU execution provider used by the cpu profile.
ARG ONNXRUNTIME_GPU_VERSION=1.19.2

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FUSION_EMOTION_MODEL_DIR=/opt/ml/model \
    FUSION_EMOTION_PROFILE=gpu \
    FUSION_EMOTION_TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    SAGEMAKER_BIND_TO_PORT=8080

WORKDIR /opt/fusion-emotion

# Serving dependencies only (no torch, no pytriton: the image has its own
# tritonserver). Kept in step with [project] dependencies in pyproject.toml.
RUN python3 -m pip install --no-cache-dir \
        "numpy>=1.24,<2" \
        "scipy>=1.11" \
        "av>=12,<19" \
        "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
        "opencv-python-headless>=4.8,<4.11" \
        "tritonclient[grpc,http]>=2.51" \
        "fastapi>=0.110" \
        "uvicorn>=0.29" \
        "python-multipart>=0.0.9" \
        "httpx>=0.27" \
        "boto3>=1.34"

COPY pyproject.toml README* ./
COPY fusion_emotion/ fusion_emotion/
COPY export/ export/
COPY client/ client/
# --no-deps: the dependencies above are the serving set; the project itself adds only its code.
RUN python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -c "import fusion_emotion.deploy.supervisor, numpy; assert numpy.__version__.startswith('1.')"

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
