# The gateway (the `extproc` console script) as a container image.
#   docker build -t aigw-extproc:0.1.0 .
#   docker run -v $PWD/config:/etc/aigw aigw-extproc:0.1.0   # serve /etc/aigw/gateway.yaml
# Envoy runs from the official envoyproxy/envoy image (docker-compose.yml,
# deploy/kubernetes). docs/operations.md explains both.

# --- build: the project and its dependencies as wheels, in a virtualenv ----------
FROM python:3.12-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only here, for a dependency without a wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/aigw
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY extproc ./extproc
# Runtime dependencies only: no dev extras (no Envoy wheel, no test tools), at the
# versions the suite passed on (constraints.txt).
RUN /opt/aigw/bin/pip install --upgrade pip \
    && /opt/aigw/bin/pip install -c constraints.txt . \
    && /opt/aigw/bin/extproc --version

# --- run: the virtualenv on a slim Python, as a non-root user ---------------------
FROM python:3.12-slim-bookworm

ENV PATH=/opt/aigw/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# ca-certificates: TLS to JWKS endpoints, rediss:// stores and the AWS STS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 aigw \
    && useradd --system --uid 10001 --gid aigw --home-dir /var/lib/aigw --shell /usr/sbin/nologin aigw \
    && mkdir -p /etc/aigw /var/lib/aigw /var/run/aigw \
    && chown aigw:aigw /var/lib/aigw /var/run/aigw
COPY --from=build /opt/aigw /opt/aigw

# The config (gateway.yaml, key files) and the data (embedded Valkey, spool).
VOLUME ["/etc/aigw", "/var/lib/aigw"]
WORKDIR /var/lib/aigw
USER 10001:10001

# gRPC ext_proc, HTTP (metrics, probes), management API.
EXPOSE 50051 9464 9465
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["extproc"]
CMD ["serve", "--config", "/etc/aigw/gateway.yaml"]
