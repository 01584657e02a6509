# syntax=docker/dockerfile:1
# The FusionRecommender operator (python -m fusionrec.operator): kopf, httpx, pydantic, prometheus-client and
# fusionrec's own code; no torch, no Ray. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t fusionrec/operator:0.1.0 .
# The base is pinned by tag and by the digest of its multi-architecture index; both stages use the same one,
# so the virtual environment built in the first runs unchanged in the second.

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY docker/operator-requirements.txt /tmp/operator-requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/operator-requirements.txt \
    && /opt/venv/bin/pip check
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fusionrec ./fusionrec
COPY train ./train
COPY serving ./serving
COPY operator ./operator
# --no-deps: the package's declared dependencies are the training stack (torch, transformers); the operator
# needs only the pinned set above, and the import below proves it.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/python -c "import fusionrec.operator.handlers"

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
RUN groupadd --system --gid 10001 fusionrec \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fusionrec
COPY --from=build /opt/venv /opt/venv
# A read-only root filesystem in the chart: no .pyc writes; logs unbuffered so a crash loses none.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 8080: /metrics (FUSIONREC_METRICS_PORT); 8081: kopf's /healthz (--liveness).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "fusionrec.operator"]
CMD ["--all-namespaces", "--liveness", "http://0.0.0.0:8081/healthz"]
