#!/bin/sh
# Push a local image to an OCI registry and print its pinned reference, REPO@sha256:<digest>:
# the value for kubeflow.image (a cluster run refuses anything that is not pinned).
#
#   scripts/image/push.sh LOCAL_IMAGE DEST_REF      e.g. localhost/thermops:<rev> registry.example.org/thermops:<rev>
#
# Environment: REGISTRY_USERNAME / REGISTRY_PASSWORD (password through --password-stdin, never a
# command line), REGISTRY_TLS_VERIFY (default true; false only for a plain-HTTP test registry),
# STORAGE_DRIVER (default vfs).
set -eu
[ $# -eq 2 ] || { echo "usage: push.sh LOCAL_IMAGE DEST_REF" >&2; exit 2; }
src=$1
dst=$2
tls="--tls-verify=${REGISTRY_TLS_VERIFY:-true}"
bh() { buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }
repo=${dst%@*}
case "${repo##*/}" in *:*) repo=${repo%:*} ;; esac   # drop the tag, not a registry port
work=$(mktemp -d "${TMPDIR:-/tmp}/push.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ -n "${REGISTRY_USERNAME:-}" ]; then
    printf '%s' "${REGISTRY_PASSWORD:-}" | bh login "$tls" --username "$REGISTRY_USERNAME" --password-stdin "${dst%%/*}" >/dev/null
fi
bh push "$tls" --digestfile "$work/digest" "$src" "docker://$dst" >&2
echo "$repo@$(cat "$work/digest")"
