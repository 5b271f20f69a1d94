# authproxy container image.
#
#   docker build -t authproxy .                    # or: podman build --format docker -t authproxy .
#   docker run -d -p 8443:8443 -v authproxy-data:/data \
#     -e UPSTREAM_URL=http://192.168.1.10:5380 -e UPSTREAM_TYPE=technitium -e HTTPS_ENABLED=true authproxy
#
# BASE is any Debian-like image with Python >= 3.11 and its venv module: the official python:3.11-slim
# (default), or plain Debian bookworm with python3, python3-venv and ca-certificates (Python at
# /usr/bin/python3). Both stages start from it, so the venv's interpreter is the same in both.
# Python packages come from requirements/*.lock, pinned with hashes: the image runs the versions the
# tests ran. `podman build` needs `--format docker` to keep HEALTHCHECK (the OCI format has none);
# Docker needs BuildKit (its default builder since 23.0) for RUN --mount.
ARG BASE=python:3.11-slim

# ---- 1: the wheels: authproxy's own (built here) and every pinned dependency ----------------------
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/build.lock requirements/runtime.lock requirements/
RUN python3 -m venv /build \
 && /build/bin/pip install --quiet --require-hashes -r requirements/build.lock \
 && /build/bin/pip wheel --quiet --require-hashes --only-binary=:all: -r requirements/runtime.lock \
      --wheel-dir /wheels
COPY pyproject.toml README.md ./
COPY authproxy ./authproxy
RUN /build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels . \
 && cp requirements/runtime.lock /wheels/ \
 && cd /wheels && sha256sum * > /wheels.sha256

# ---- 2: the runtime: a venv with those wheels, nothing else ---------------------------------------
FROM ${BASE}
ARG BASE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="authproxy" \
      org.opencontainers.image.description="Authentication gateway and forward-auth service for self-hosted admin UIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE}"
ENV PATH=/opt/authproxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    AUTHPROXY_DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8443
# Offline install from the first stage's wheels (bind-mounted: they never become a layer here), hashes
# checked again; pip and setuptools leave the venv in the same step. The wheels' checksums are copied
# first: podman/buildah do not count a bind mount's content in the RUN's cache key, so without them a
# changed lock or authproxy wheel would reuse the old layer.
COPY --from=build /wheels.sha256 /opt/authproxy/wheels.sha256
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/authproxy \
 && /opt/authproxy/bin/pip install --quiet --no-cache-dir --disable-pip-version-check --no-index \
      --find-links /wheels --require-hashes -r /wheels/runtime.lock \
 && /opt/authproxy/bin/pip install --quiet --no-cache-dir --disable-pip-version-check --no-index --no-deps \
      /wheels/authproxy-*.whl \
 && /opt/authproxy/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && groupadd --gid 10001 authproxy \
 && useradd --uid 10001 --gid authproxy --home-dir /data --no-create-home --shell /usr/sbin/nologin authproxy \
 && mkdir -m 0700 /data && chown authproxy:authproxy /data
USER authproxy
WORKDIR /data
VOLUME /data
EXPOSE 8443
# SIGTERM (docker/podman stop): new connections refused, WebSockets closed (1001), requests in flight
# finish, all within SHUTDOWN_TIMEOUT (8 s by default, below the 10 s before the runtime's SIGKILL).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=6s --start-period=20s --retries=3 CMD ["authproxy", "healthcheck"]
ENTRYPOINT ["authproxy"]
CMD ["run"]
