# The corral image used by docker-compose.yml (worker, beat and flower services).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY corral ./corral
COPY tasks ./tasks
COPY workers ./workers
COPY config ./config
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin corral

# beat and flower run unprivileged; the worker service overrides this with `user: root`.
USER corral
WORKDIR /tmp
CMD ["corral", "--help"]
