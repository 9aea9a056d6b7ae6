# syntax=docker/dockerfile:1
# The Kiln operator image: kiln[operator] only (kopf, kubernetes client, prometheus-client),
# no torch or Ray. Probes are Kubernetes' (kopf's /healthz on :8081), so no HEALTHCHECK.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY operator ./operator
# setuptools searches trainer_image/ too; the operator image does not carry the trainer code.
RUN mkdir -p trainer_image \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 1000 kiln \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kiln
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/kiln-*.whl)[operator]" \
    && rm -rf /wheels
# The Deployment mounts an emptyDir at /tmp and makes the root filesystem read-only.
USER 1000:1000
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["kiln", "operator"]
