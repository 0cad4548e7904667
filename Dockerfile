# The corral image used by docker-compose.yml (worker, beat and flower services).
#
# BASE_IMAGE: any image with python3 (>= 3.11, with the venv module) and useradd. The default pulls
# python:3.11-slim from a registry; scripts/build-images passes a Debian base it makes locally.
# PIP_OFFLINE: empty installs from PyPI (network needed during the build); non-empty installs only
# from wheelhouse/ (filled on the host by scripts/build-images: a container does not reach PyPI the
# way the host does).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_OFFLINE=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/corral/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

WORKDIR /src
# Only wheelhouse/.gitignore unless scripts/build-images filled it.
COPY wheelhouse /wheels
COPY pyproject.toml README.md ./
COPY corral ./corral
COPY tasks ./tasks
COPY workers ./workers
COPY config ./config
# A venv at the prefix the systemd units use: Debian's system Python refuses pip installs (PEP 668).
# With the flower extra: this image also runs the compose flower service and the corral-flower unit.
RUN python3 -m venv /opt/corral/venv \
    && if [ -n "$PIP_OFFLINE" ]; then \
         /opt/corral/venv/bin/pip install --no-index --find-links /wheels '.[flower]' ; \
       else \
         /opt/corral/venv/bin/pip install '.[flower]' ; \
       fi \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin corral

# beat and flower run unprivileged; the worker service overrides this with `user: root`.
USER corral
WORKDIR /tmp
CMD ["corral", "--help"]
