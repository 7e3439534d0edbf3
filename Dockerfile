# Bascule in a container: the wheels `make dist` builds, installed in a slim Python image.
#
#   docker build -t bascule .
#   docker run --rm -p 8080:8080 -v "$PWD/gateway.toml:/etc/bascule/plugins.toml:ro" bascule
# (podman/buildah: `build --format docker`; the OCI format has no HEALTHCHECK and drops it.)
#
# The config is read from /etc/bascule/plugins.toml: mount yours there (the image has
# none). Inside a container its listeners must bind every interface to be reachable:
#   [gateway]
#   listen = "0.0.0.0:8080"
#   admin = "0.0.0.0:8081"     # publish it only to the orchestrator's network
# HEALTHCHECK probes GET /healthz on the admin listener (the public port when there is no
# admin listener). `docker stop` sends SIGTERM: the gateway stops accepting connections and
# lets requests in flight finish for up to [gateway] graceful_timeout (30 s by default; the
# process exits at most 5 s after that), so give it longer: `docker stop -t 40`, or
# stop_grace_period: 40s in compose. docs/deploy.md has the rest.
# `docker kill -s HUP` reloads the config.

ARG PYTHON_VERSION=3.11

# --- build: wheels and sdists of every distribution into /src/dist -------------------
# The full image: make is there. Nothing from this stage but dist/ reaches the final image.
FROM python:${PYTHON_VERSION} AS build
WORKDIR /src
COPY Makefile LICENSE ./
COPY sdk sdk
COPY core core
COPY plugins plugins
RUN make dist PYTHON=python3

# --- run: the wheels only, as an unprivileged user -----------------------------------
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/bascule/bin:$PATH
COPY --from=build /src/dist /tmp/dist
# Every wheel: the gateway, the SDK and all plugins; third-party dependencies from the index.
RUN python -m venv /opt/bascule \
 && /opt/bascule/bin/pip install /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && groupadd --system --gid 10001 bascule \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin bascule \
 && mkdir -p /etc/bascule
COPY LICENSE /usr/share/doc/bascule/LICENSE
COPY deploy/healthcheck.py /opt/bascule/healthcheck.py

# Numeric, so that Kubernetes' runAsNonRoot can tell it is not root (deploy/kubernetes/).
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/bascule/bin/python", "/opt/bascule/healthcheck.py", "/etc/bascule/plugins.toml"]
ENTRYPOINT ["/opt/bascule/bin/bascule"]
CMD ["run", "-c", "/etc/bascule/plugins.toml"]
