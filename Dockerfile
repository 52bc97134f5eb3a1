# modelgate: multi-stage build, non-root at run time.
#
#   podman build -t modelgate .                                  # gateway + CPU engine
#   podman build -t modelgate-gw --build-arg EXTRAS=gateway .    # gateway only (no torch)
#   podman build -t modelgate-cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# BASE must have python3 (3.11+), venv and pip: debian:bookworm-slim with them installed,
# or any image built from a Debian root filesystem (see docs/deploy.md).
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
# "all": gateway, local engine (torch from TORCH_INDEX), containers, embeddings;
# "gateway": the gateway alone, for replicas in front of workers and upstreams
ARG EXTRAS=all
# the CPU build of torch by default; a CUDA index for a GPU image
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /opt/modelgate \
 && /opt/modelgate/bin/pip install -q --upgrade pip \
 && if [ "$EXTRAS" = "all" ]; then \
      /opt/modelgate/bin/pip install -q --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}" \
      && /opt/modelgate/bin/pip install -q ".[local,containers,embeddings,redis]" \
      && /opt/modelgate/bin/pip install -q --no-deps "xgrammar>=0.2.9,<0.3" "apache-tvm-ffi>=0.1.11"; \
    else \
      /opt/modelgate/bin/pip install -q ".[redis]"; \
    fi \
 && /opt/modelgate/bin/modelgate --help > /dev/null

FROM ${BASE}
COPY --from=build /opt/modelgate /opt/modelgate
RUN (getent group modelgate || groupadd --system --gid 10001 modelgate) \
 && (getent passwd modelgate || useradd --system --uid 10001 --gid modelgate --home-dir /var/lib/modelgate --create-home modelgate)
USER 10001:10001
WORKDIR /var/lib/modelgate
ENV PATH=/opt/modelgate/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    MODELGATE_SERVER__HOST=0.0.0.0
EXPOSE 8000
# readiness for orchestrators: GET /ready (200 when every model can serve)
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"
ENTRYPOINT ["modelgate"]
CMD ["serve", "--config", "/etc/modelgate/modelgate.yaml"]
