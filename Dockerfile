# syntax=docker/dockerfile:1
# One image for every runplane service; the command picks which one runs:
#   python -m services.scheduler | services.projector | services.log_collector | services.node_agent
# Settings come from RUNPLANE_* environment variables (docs/settings.md).
# The health check of each is `python -m services.core.health <service>` (see compose.yaml).

# The Python the test suite runs on; the runtime stage must be the same image, since the
# virtual environment copied into it points at this interpreter's path.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Everything installed lands in one directory the runtime stage copies whole: no pip cache,
# no sources, no build backend left behind.
RUN python -m venv /opt/runplane
WORKDIR /src
COPY pyproject.toml README.md ./
COPY events/ events/
COPY projections/ projections/
COPY services/ services/
COPY cli/ cli/
COPY mcli/ mcli/
RUN /opt/runplane/bin/pip install .

# A node-agent whose ranks run in podman containers on its host (RUNPLANE_EXECUTOR=container),
# built only when asked for (--target container-agent; compose's `containers` profile): the
# default image's runtime plus the podman client, which drives the host's podman through its
# socket (`--remote`, docs/containers.md). Root: whoever has that socket is root on the host.
FROM ${PYTHON_IMAGE} AS container-agent
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates podman \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/runplane /opt/runplane
ENV PATH=/opt/runplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /root
CMD ["python", "-m", "services.node_agent"]

# The default image: every service's.
FROM ${PYTHON_IMAGE}
# git: the node-agent's git_repo integration clones with it (bash, for run commands, is in
# the base image already).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# /data belongs to the service user, so a named volume mounted there starts out writable.
RUN useradd --create-home --uid 10001 --user-group runplane \
    && install -d -o runplane -g runplane /data
COPY --from=build /opt/runplane /opt/runplane
ENV PATH=/opt/runplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER runplane
WORKDIR /home/runplane
CMD ["python", "-m", "services.scheduler"]
