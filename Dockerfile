# genrec serving image. CPU by default; for GPUs pass a CUDA base and the matching torch:
#   docker build -t genrec .
#   docker build -t genrec:cuda --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#                --build-arg GENREC_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124" .
# It installs exactly as CI does (scripts/install.sh). Artifacts are not baked in: mount a
# registry (or `dvc pull` one) at /srv/genrec/artifacts.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG GENREC_TORCH=torch==2.13.0
ENV GENREC_TORCH=${GENREC_TORCH} \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    BENTOML_DO_NOT_TRACK=true \
    GENREC_ARTIFACTS=/srv/genrec/artifacts

RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip && rm -rf /var/lib/apt/lists/*; \
    fi \
 && apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/genrec
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY components ./components
COPY proto ./proto
COPY params.yaml dvc.yaml ./
RUN bash scripts/install.sh && rm -rf /root/.cache/pip
ENV PATH=/srv/genrec/.venv/bin:$PATH

EXPOSE 50051 3000
# default: the generator gRPC service; override e.g. `genrec serve retrieval --port 50052`
# or `bentoml serve components.serving.bento:GenRecService --port 3000`.
# Off loopback the services refuse plaintext: mount a certificate and set GENREC_TLS_CERT / GENREC_TLS_KEY
# (and GENREC_AUTH_TOKEN), or pass -e GENREC_ALLOW_INSECURE=1 for a local try (README "Security").
CMD ["genrec", "serve", "generator", "--host", "0.0.0.0", "--port", "50051"]
