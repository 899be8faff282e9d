#!/usr/bin/env bash
# Make the local Debian base image (localhost/thermops-base:bookworm) without a
# registry: debootstrap a minimal bookworm root from Debian's package mirror and
# import it as a one-layer image into buildah's vfs storage. Skips when the image
# is already there (FORCE=1 rebuilds).
#
# The base carries only what the Dockerfile needs before its own steps:
# python3 (3.11 on bookworm) with venv, and CA certificates for pip.
set -euo pipefail

BASE_TAG="${BASE_TAG:-localhost/thermops-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
# buildah 1.28 ignores $STORAGE_DRIVER in some commands: always pass the flag.
bh() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }
here="$(cd "$(dirname "$0")" && pwd)"
"$here/ensure-tools.sh"

if [[ "${FORCE:-0}" != 1 ]] && bh inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
    echo "base image $BASE_TAG present: reusing it (FORCE=1 to rebuild)"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/thermops-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
# minbase: essential + apt only; python3-venv brings ensurepip's wheels so the
# Dockerfile can make a venv (bookworm's python is externally managed, PEP 668).
nice debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$work/root" "$MIRROR"
# Drop what an image does not need: apt lists, caches, docs, man pages.
chroot "$work/root" apt-get clean
rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/apt/*.bin \
       "$work/root"/usr/share/doc/* "$work/root"/usr/share/man/* \
       "$work/root"/usr/share/locale/* "$work/root"/var/log/*.log
tar -C "$work/root" --numeric-owner -cf "$work/root.tar" .
# podman import only unpacks a tarball into a layer: no container is run, so it
# works here although `podman run` does not (no usable cgroups).
podman --storage-driver "$STORAGE_DRIVER" import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$work/root.tar" "$BASE_TAG" >/dev/null
end=$(date +%s)
size=$(podman --storage-driver "$STORAGE_DRIVER" image inspect --format '{{.Size}}' "$BASE_TAG")
echo "base image $BASE_TAG made in $((end - start)) s, size $size"
