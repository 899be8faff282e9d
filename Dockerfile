# thermops component image: every Kubeflow step (and `dvc repro` in a container)
# runs the project in this image. One Dockerfile, two bases (see docs/image.md):
#
#   BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime   (default, clusters)
#   BASE_IMAGE=localhost/thermops-base:bookworm                 (made by `make base-image`,
#                                                                 builds here without a registry)
#
# Everything after FROM is the same for both. The project goes into a venv made
# with --system-site-packages: on the PyTorch base its torch (when it is our pin,
# TORCH_VERSION) is kept and only the rest is installed; on the Debian base torch
# and its CUDA 13 wheels come from the package index like everything else.
# Versions come from constraints.txt (pip freeze of the project venv), so the image,
# the venv and the bento agree; tests/test_image_pins.py checks it.
#
# Build here:      make image              (buildah, vfs storage, chroot isolation)
# Build w/ Docker: docker build --build-arg GIT_REVISION=$(git rev-parse --short HEAD) -t thermops:dev .
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.14.1
ARG BASE_IMAGE

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/thermops \
    PATH=/opt/thermops/bin:${PATH} \
    BENTOML_DO_NOT_TRACK=true \
    GX_ANALYTICS_ENABLED=false \
    MPLBACKEND=Agg

# The project requires Python 3.11 (pyproject: >=3.11,<3.12): fail the build with
# one clear line rather than a resolver error later.
RUN python3 -c "import sys; v='%d.%d' % sys.version_info[:2]; sys.exit(0 if v == '${PYTHON_VERSION}' else 'error: base image has python ' + v + ', thermops needs ${PYTHON_VERSION}')" \
 && python3 -m venv --system-site-packages /opt/thermops \
 && useradd --create-home --uid 1000 --shell /bin/bash thermops

# Dependencies first, from the two files that define them, so that a code change
# reuses this (large) layer. pip reads the build machine's configuration when the
# build mounts it (scripts/image/build.sh mounts pip.conf and the local package
# folders read-only); with plain `docker build` it uses PyPI.
COPY pyproject.toml constraints.txt /tmp/thermops-deps/
RUN cd /tmp/thermops-deps \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -c constraints.txt -r requirements.txt \
 && python3 -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${TORCH_VERSION}' else 'error: torch ' + torch.__version__ + ' in image, pinned ${TORCH_VERSION}')" \
 && rm -rf /tmp/thermops-deps /root/.cache

# The project itself: the repository tree at /app (the Kubeflow components find
# their non-code deps, e.g. data/calibration, under `kubeflow.project_root`, which is
# /app) and the packages installed into the venv from it. No training data:
# .dockerignore keeps data/ (but data/calibration), models/, reports/, metrics/,
# .dvc/cache, .venv and .git out of the build context.
COPY . /app
RUN pip install --no-deps /app \
 && pip check \
 && rm -rf /app/build /app/*.egg-info /root/.cache

# Labels last: the revision changes every commit, and with a layer cache (Docker)
# everything after it would be rebuilt (an ARG is part of the cache key of every
# RUN after it, so GIT_REVISION is declared here too).
ARG GIT_REVISION=unknown
# Outside a git checkout, model cards name the code by this commit (thermops.model.card.code_lineage).
ENV THERMOPS_CODE_COMMIT=${GIT_REVISION}
LABEL org.opencontainers.image.title="thermops" \
      org.opencontainers.image.description="thermops pipeline components: validate, pretrain, finetune, gate, package" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

USER thermops
WORKDIR /app
CMD ["python3", "-c", "import thermops, torch; print('thermops image', torch.__version__)"]
