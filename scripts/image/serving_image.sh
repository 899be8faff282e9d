#!/bin/sh
# Build a bento's serving image with buildah and push it to an OCI registry, tagged by the
# bento's content version (the package step derives it from the model, the service files
# and the serving arguments), and report it by digest.
#
#   serving_image.sh BENTO_ARCHIVE REGISTRY IMAGE_OUT [REPORT_OUT]
#
# BENTO_ARCHIVE  a `bentoml export` archive (the Kubeflow export task's bento_archive)
# REGISTRY       e.g. registry.example.org/thermops: the image is REGISTRY/<bento name>:<bento version>
# IMAGE_OUT      written with REGISTRY/<bento name>@sha256:<digest> (a KFP output parameter)
# REPORT_OUT     optional Markdown naming the image (a KFP Markdown artifact)
#
# Environment: REGISTRY_USERNAME / REGISTRY_PASSWORD (from the Kubernetes secret; the password
# goes to `buildah login --password-stdin`, never on a command line), REGISTRY_TLS_VERIFY
# (default true; false only for a plain-HTTP test registry), STORAGE_DRIVER (default vfs),
# BUILD_FROM (optional `buildah bud --from`: a stand-in for the Dockerfile's base image).
# The same script runs in the Kubeflow builder task (a buildah image) and here.
set -eu
[ $# -ge 3 ] || { echo "usage: serving_image.sh BENTO_ARCHIVE REGISTRY IMAGE_OUT [REPORT_OUT]" >&2; exit 2; }
archive=$1
registry=${2%/}
image_out=$3
report=${4:-}
[ -f "$archive" ] || { echo "error: $archive: no bento archive" >&2; exit 1; }
[ -n "$registry" ] || { echo "error: no registry given" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/serving-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/ctx"
tar -xf "$archive" -C "$work/ctx"
[ -f "$work/ctx/bento.yaml" ] || { echo "error: $archive holds no bento.yaml" >&2; exit 1; }
field() { sed -n "s/^$1: *//p" "$work/ctx/bento.yaml" | head -1 | tr -d "\"'"; }
name=$(field name)
version=$(field version)
case "$name$version" in *[!a-z0-9._-]*|"") echo "error: bento name/version '$name:$version' unusable as an image tag" >&2; exit 1;; esac
ref="$registry/$name:$version"
tls="--tls-verify=${REGISTRY_TLS_VERIFY:-true}"
bh() { buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }

if [ -n "${REGISTRY_USERNAME:-}" ]; then
    printf '%s' "${REGISTRY_PASSWORD:-}" | bh login "$tls" --username "$REGISTRY_USERNAME" --password-stdin "${registry%%/*}" >/dev/null
fi
# shellcheck disable=SC2086
bh bud --isolation chroot --layers=false ${BUILD_FROM:+--from "$BUILD_FROM"} \
    --label "org.opencontainers.image.title=$name" --label "org.opencontainers.image.version=$version" \
    -t "$ref" -f "$work/ctx/env/docker/Dockerfile" "$work/ctx"
bh push "$tls" --digestfile "$work/digest" "$ref" "docker://$ref"
digest=$(cat "$work/digest")
printf '%s' "$registry/$name@$digest" > "$image_out"
if [ -n "$report" ]; then
    mkdir -p "$(dirname "$report")"
    printf '# Serving image\n\n`%s`\n\ntag `%s`, built from bento `%s:%s` with its own Dockerfile.\n' \
        "$registry/$name@$digest" "$ref" "$name" "$version" > "$report"
fi
echo "pushed $ref ($registry/$name@$digest)"
