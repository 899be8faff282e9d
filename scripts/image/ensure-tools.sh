#!/usr/bin/env bash
# Install buildah, podman, debootstrap, skopeo and docker-registry from Debian's packages when missing
# (a fresh machine, run as root). Quiet when everything is there.
set -euo pipefail
missing=()
for tool in buildah podman debootstrap skopeo docker-registry; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ "$(id -u)" != 0 ]]; then
        echo "error: missing ${missing[*]}; install buildah podman debootstrap skopeo docker-registry (needs root)" >&2
        exit 1
    fi
    echo "installing buildah podman debootstrap skopeo docker-registry fuse-overlayfs (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        buildah podman debootstrap skopeo docker-registry fuse-overlayfs >/dev/null
fi
