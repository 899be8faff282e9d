#!/usr/bin/env bash
# Build the thermops component image from ./Dockerfile and tag it with the git
# revision. Uses `docker build` where a Docker daemon answers, otherwise buildah
# (vfs storage, chroot isolation: no daemon, no cgroups needed). With buildah the
# machine's pip configuration and its local package folders are mounted
# read-only, so the build reaches only the indexes this machine's pip uses.
#
# Environment: IMAGE (default localhost/thermops), BASE_IMAGE (default: the local
# Debian base with buildah, the Dockerfile's CUDA PyTorch default with Docker),
# BUILDER (auto|buildah|docker), LAYERS (buildah --layers, default false: with vfs
# storage every cached step is a full copy of the root filesystem, 6+ GB here),
# BLOB_TMPDIR (where the layer blobs go while committing; default TMPDIR, or /dev/shm
# when the disk is short and memory is not), COMPRESS (default 1: gzip the committed
# layer; 0 leaves it uncompressed: no faster here, and its blobs take ~5 GB more; see
# docs/image.md, "Disk"),
# EXTRA_BUILD_ARGS (appended to the build command).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
IMAGE="${IMAGE:-localhost/thermops}"
BUILDER="${BUILDER:-auto}"
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
export STORAGE_DRIVER
rev="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
# A dirty tree must not masquerade as a commit.
if [[ "$rev" != unknown ]] && ! git diff --quiet HEAD -- Dockerfile pyproject.toml constraints.txt thermops components pipeline params.yaml dvc.yaml 2>/dev/null; then
    rev="${rev}-dirty"
fi
TAG="${TAG:-$rev}"

if [[ "$BUILDER" == auto ]]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        BUILDER=docker
    else
        BUILDER=buildah
    fi
fi

start=$(date +%s)
if [[ "$BUILDER" == docker ]]; then
    args=(--build-arg "GIT_REVISION=$rev" -t "$IMAGE:$TAG")
    [[ -n "${BASE_IMAGE:-}" ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    # shellcheck disable=SC2086
    docker build "${args[@]}" ${EXTRA_BUILD_ARGS:-} .
    size=$(docker image inspect --format '{{.Size}}' "$IMAGE:$TAG")
else
    "$repo/scripts/image/ensure-tools.sh"
    # Committing the one big layer holds, at once, the working container and the new
    # layer on the storage's disk (with vfs each a full copy of the image, ~6.5 GB), and
    # the layer's blob twice (buildah's copy and the storage's, ~3.7 GB each with gzip)
    # under TMPDIR (default /var/tmp). Measured peaks: docs/image.md, "Disk". When that is
    # one disk, it is short, and memory is not, the blobs go to a RAM-backed folder
    # (/dev/shm) instead; BLOB_TMPDIR names a folder for them explicitly.
    existing() { local p=$1; while [[ ! -e "$p" ]]; do p=$(dirname "$p"); done; echo "$p"; }
    gb_free() { echo $(( $(df -Pk "$(existing "$1")" | awk 'NR==2 {print $4}') / 1048576 )); }
    fs_of() { df -P "$(existing "$1")" | awk 'NR==2 {print $1}'; }
    store_need=13
    blob_need=$([[ "${COMPRESS:-1}" == 0 ]] && echo 13 || echo 8)
    graphroot=$(buildah --storage-driver "$STORAGE_DRIVER" info --format '{{.store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)
    store_free=$(gb_free "$graphroot")
    blob_dir=${BLOB_TMPDIR:-${TMPDIR:-/var/tmp}}
    made_blob_dir=
    if [[ -z "${BLOB_TMPDIR:-}" && "$(fs_of "$blob_dir")" == "$(fs_of "$graphroot")" ]] \
        && (( store_free < store_need + blob_need )) \
        && [[ "$(fs_of /dev/shm 2>/dev/null)" == tmpfs ]] \
        && (( $(gb_free /dev/shm) >= blob_need + 2 )) \
        && (( $(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo) >= blob_need + 6 )); then
        blob_dir=$(mktemp -d /dev/shm/thermops-image-blobs.XXXXXX)
        made_blob_dir=$blob_dir
        trap 'rm -rf "$made_blob_dir"' EXIT
        echo "note: $store_free GB free on the storage's disk, short of $((store_need + blob_need)) GB:" \
             "the layer blobs ($blob_need GB at most) go to $blob_dir (RAM) while committing" >&2
    fi
    short=()
    if [[ "$(fs_of "$blob_dir")" == "$(fs_of "$graphroot")" ]]; then
        (( store_free >= store_need + blob_need )) || short+=("$graphroot and $blob_dir (one disk): $store_free GB free, about $((store_need + blob_need)) GB needed")
    else
        (( store_free >= store_need )) || short+=("$graphroot: $store_free GB free, about $store_need GB needed")
        blob_free=$(gb_free "$blob_dir")
        (( blob_free >= blob_need )) || short+=("$blob_dir: $blob_free GB free, about $blob_need GB needed")
    fi
    for line in "${short[@]}"; do
        echo "warning: short of disk for the image build: $line (vfs: working container + new layer;" \
             "TMPDIR/BLOB_TMPDIR: the layer blobs). Free space, or remove old images:" \
             "buildah --storage-driver $STORAGE_DRIVER rmi --all" >&2
    done
    BASE_IMAGE="${BASE_IMAGE:-localhost/thermops-base:bookworm}"
    if [[ "$BASE_IMAGE" == localhost/thermops-base:* ]]; then
        BASE_TAG="$BASE_IMAGE" "$repo/scripts/image/make-base.sh"
    fi
    volumes=()
    py="$repo/.venv/bin/python"; [[ -x "$py" ]] || py=python3
    # Mount every pip configuration file this machine has at the same place (the
    # build runs as root, so root's user config is read too) ...
    for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [[ -f "$conf" ]] && volumes+=(--volume "$conf:$conf:ro")
    done
    # ... and every local folder those configurations (and PIP_* variables) name:
    # find-links folders, and file:// indexes (the folder above .../simple, whose
    # pages link to ../files), and constraint files a pip.conf names.
    declare -A seen=()
    while read -r path; do
        [[ -n "$path" && -e "$path" && -z "${seen[$path]:-}" ]] || continue
        seen[$path]=1
        volumes+=(--volume "$path:$path:ro")
    done < <("$py" "$repo/scripts/image/pip_sources.py")
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && \
        volumes+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    # shellcheck disable=SC2086
    TMPDIR="$blob_dir" nice buildah --storage-driver "$STORAGE_DRIVER" bud \
        --isolation chroot \
        --layers="${LAYERS:-false}" \
        --disable-compression="$([[ "${COMPRESS:-1}" == 0 ]] && echo true || echo false)" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "GIT_REVISION=$rev" \
        "${volumes[@]}" \
        -t "$IMAGE:$TAG" -t "$IMAGE:latest" \
        ${EXTRA_BUILD_ARGS:-} \
        -f Dockerfile .
    size=$(podman --storage-driver "$STORAGE_DRIVER" image inspect --format '{{.Size}}' "$IMAGE:$TAG")
    # vfs keeps every image as full copies (7 GB each): drop this image's older
    # builds unless KEEP_IMAGES=1.
    if [[ "${KEEP_IMAGES:-0}" != 1 ]]; then
        buildah --storage-driver "$STORAGE_DRIVER" images --format '{{.Name}}:{{.Tag}}' \
            | { grep -Fx -v -e "$IMAGE:$TAG" -e "$IMAGE:latest" | grep "^$IMAGE:" || true; } \
            | while read -r old; do buildah --storage-driver "$STORAGE_DRIVER" rmi "$old" >/dev/null || true; done
        buildah --storage-driver "$STORAGE_DRIVER" rmi --prune >/dev/null 2>&1 || true
    fi
fi
end=$(date +%s)
echo "built $IMAGE:$TAG with $BUILDER in $((end - start)) s, size $size bytes ($((size / 1000000)) MB)"
