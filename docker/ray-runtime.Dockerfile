# syntax=docker/dockerfile:1
# The image of every Ray pod the operator creates (training RayJobs, the serving RayService): Ray with Train
# and Serve, CPU torch and fusion-recommender[train,serve,compile]. Build from the repository root:
#   docker build -f docker/ray-runtime.Dockerfile -t fusionrec/ray-runtime:0.1.0 .
# GPU training or TensorRT serving needs a CUDA base and torch build instead; this image is the CPU one.
# The base is pinned by tag and by the digest of its multi-architecture index.

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY docker/ray-runtime-constraints.txt /tmp/constraints.txt
# torch first, from PyTorch's CPU index: the torch wheel on PyPI is the multi-GB CUDA build.
RUN /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fusionrec ./fusionrec
COPY train ./train
COPY serving ./serving
COPY operator ./operator
# The constraints pin Ray and every direct dependency, and keep the CPU torch above in place.
RUN /opt/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt ".[train,serve,compile]" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import torch, ray, fusionrec.train, fusionrec.serving; assert torch.__version__.endswith('+cpu')"

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
# wget: KubeRay's probes and its job submitter call `wget ... | grep success` inside the Ray container.
# Pinned to bookworm's current version: a security update that replaces it fails this build instead of
# silently changing the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget=1.21.3-1+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray
COPY --from=build /opt/venv /opt/venv
# Ray writes its session files under /tmp/ray and its auth token under $HOME/.ray.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/ray
# uid 1000, as in Ray's own images, so volumes prepared for those work here too.
USER 1000:1000
WORKDIR /home/ray
