# Component image: built without a Docker daemon with buildah
# (vfs storage, chroot isolation) on the locally debootstrapped Debian base, or
# with `docker build` where a daemon answers. See docs/image.md.
#   make base-image   debootstrap Debian bookworm -> localhost/thermops-base:bookworm (once; reused)
#   make image        build ./Dockerfile -> $(IMAGE):<git rev> and :latest, print the size
#   make image-test   build, then run compiled pipeline steps inside the image (tests/test_image_run.py, tests/test_image_missing_import.py)
#   make image-push   push $(IMAGE):<git rev> to $(REGISTRY)/thermops:<git rev>; prints the
#                     pinned reference (repo@sha256:<digest>) for kubeflow.image
IMAGE ?= localhost/thermops
BASE_IMAGE ?=
REGISTRY ?=
export STORAGE_DRIVER ?= vfs
IMAGE_REV = $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

.PHONY: base-image image image-push image-test

base-image:
	scripts/image/make-base.sh

image:
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) scripts/image/build.sh

image-push: image
	@test -n "$(REGISTRY)" || { echo "error: set REGISTRY, e.g. make image-push REGISTRY=ghcr.io/you" >&2; exit 1; }
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker tag $(IMAGE):$(IMAGE_REV) $(REGISTRY)/thermops:$(IMAGE_REV) && docker push -q $(REGISTRY)/thermops:$(IMAGE_REV) >/dev/null && \
	  ref=$$(docker image inspect --format '{{index .RepoDigests 0}}' $(REGISTRY)/thermops:$(IMAGE_REV)); \
	else \
	  ref=$$(scripts/image/push.sh $(IMAGE):$(IMAGE_REV) $(REGISTRY)/thermops:$(IMAGE_REV)); \
	fi; \
	echo "pushed; set in params.yaml:  kubeflow.image: $$ref"

# The in-image run: fast pin checks plus real steps in the just-built image.
image-test: setup image
	THERMOPS_IMAGE=$(IMAGE):latest $(BIN)/python -m pytest tests/test_image_pins.py tests/test_image_run.py tests/test_image_missing_import.py tests/test_image_registry.py -x -q -p no:cacheprovider
