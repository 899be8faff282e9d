#!/usr/bin/env bash
# Build the serving image from a bento's own generated Dockerfile with buildah,
# the daemonless stand-in for `bentoml containerize` (which needs Docker).
#
#   scripts/image/bento_image.sh [BENTO_TAG]     (default: build a throwaway bento)
#
# With BENTO_TAG the bento comes from $BENTOML_HOME (the `package` step's store);
# without it a throwaway bento is built from the project's bentofile.yaml in a
# scratch BENTOML_HOME, with a placeholder model (the generated Dockerfile does
# not depend on the model). The bento is exported with its models, as
# `bentoml containerize` does, and its env/docker/Dockerfile is built unchanged
# except for its base: the Dockerfile starts FROM python:3.11-slim, which no
# registry here serves, so `--from` points it at a stand-in made from the local
# Debian base (python 3.11 + pip, like python:3.11-slim). The Dockerfile installs
# with uv, which does not read pip.conf: this machine's pip sources are given to
# it as a read-only /etc/uv/uv.toml.
# With Docker and a registry:  bentoml containerize thermops:latest -t thermops-serve:<rev>
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
bh() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }
py="$repo/.venv/bin/python"; [[ -x "$py" ]] || py=python3
bentoml_cli="$(dirname "$py")/bentoml"
BASE_TAG="${BASE_TAG:-localhost/thermops-base:bookworm}"
STANDIN="${STANDIN:-localhost/thermops-python:3.11-slim}"
SERVE_IMAGE="${SERVE_IMAGE:-localhost/thermops-serve}"
export BENTOML_DO_NOT_TRACK=true

"$repo/scripts/image/make-base.sh"
work="$(mktemp -d "${TMPDIR:-/tmp}/thermops-bento.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. the bento
if [[ $# -ge 1 ]]; then
    tag="$1"
else
    export BENTOML_HOME="$work/bentoml"
    model_name="$("$py" -c "import yaml,sys; print(yaml.safe_load(open('$repo/params.yaml')).get('package', {}).get('model_name', 'thermops-classifier'))")"
    "$py" - "$model_name" <<'EOF'
import sys, bentoml
with bentoml.models.create(sys.argv[1], labels={"purpose": "throwaway-for-image-build"}) as m:
    open(m.path_of("PLACEHOLDER"), "w").write("placeholder model: only the bento's Dockerfile is under test\n")
EOF
    (cd "$repo" && "$bentoml_cli" build -f bentofile.yaml . >/dev/null)
    tag="$("$bentoml_cli" list -o json | "$py" -c "import json,sys; print(json.load(sys.stdin)[0]['tag'])")"
fi
"$bentoml_cli" export "$tag" "$work/bento.bento" >/dev/null
mkdir -p "$work/context"
tar -C "$work/context" -xf "$work/bento.bento"
dockerfile="$work/context/env/docker/Dockerfile"
head -12 "$dockerfile" | grep -q "^FROM python:3.11-slim" || {
    echo "error: $dockerfile does not start FROM python:3.11-slim; update the stand-in" >&2; exit 1; }

# 2. the python:3.11-slim stand-in (once)
if ! bh inspect --type image "$STANDIN" >/dev/null 2>&1; then
    ctr=$(bh from --pull=never "$BASE_TAG")
    bh run --isolation chroot "$ctr" -- sh -ec \
        'python3 -m venv /usr/local/python && ln -s /usr/local/python/bin/python /usr/local/bin/python && ln -s /usr/local/python/bin/pip /usr/local/bin/pip'
    bh config --env PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --label org.opencontainers.image.description="stand-in for python:3.11-slim: Debian bookworm python 3.11 + pip" "$ctr"
    bh commit --rm "$ctr" "$STANDIN" >/dev/null
fi

# 3. this machine's pip sources, for pip (uv's bootstrap) and for uv
volumes=()
for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    [[ -f "$conf" ]] && volumes+=(--volume "$conf:$conf:ro")
done
while read -r path; do
    [[ -n "$path" ]] && volumes+=(--volume "$path:$path:ro")
done < <("$py" "$repo/scripts/image/pip_sources.py")
"$py" "$repo/scripts/image/pip_sources.py" --uv-toml > "$work/uv.toml"
# uv's own CA roots do not include this machine's (a TLS-inspecting proxy's):
# use the system store, i.e. the machine's bundle mounted below.
# (`native-tls`: deprecated for `system-certs` in uv 0.13, still honoured, and
# known to older uv too.) Like pip, consider every index for every package
# (uv's default stops at the first index that has the name at all).
printf 'native-tls = true\nindex-strategy = "unsafe-best-match"\n' >> "$work/uv.toml"
volumes+=(--volume "$work/uv.toml:/etc/uv/uv.toml:ro")
# The machine's CA bundle (the stand-in already has ca-certificates, so the
# Dockerfile's apt-get leaves that file alone).
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && \
    volumes+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)

# 4. build the generated Dockerfile as it is, on the stand-in
rev="$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
start=$(date +%s)
nice buildah --storage-driver "$STORAGE_DRIVER" bud --isolation chroot --layers=false \
    --from "$STANDIN" "${volumes[@]}" \
    --label "org.opencontainers.image.revision=$rev" \
    -t "$SERVE_IMAGE:$rev" -t "$SERVE_IMAGE:latest" \
    -f "$dockerfile" "$work/context"
end=$(date +%s)
size=$(podman --storage-driver "$STORAGE_DRIVER" image inspect --format '{{.Size}}' "$SERVE_IMAGE:$rev")
echo "built $SERVE_IMAGE:$rev from bento $tag in $((end - start)) s, size $size bytes ($((size / 1000000)) MB)"

# 5. the service imports inside it, with the bento's own environment
ctr=$(bh from --pull=never "$SERVE_IMAGE:$rev")
bh run --isolation chroot "$ctr" -- sh -ec \
    'cd /home/bentoml/bento/src && python -c "import bentoml, torch, service; print(\"serving image ok: bentoml\", bentoml.__version__, \"torch\", torch.__version__)"'
bh rm "$ctr" >/dev/null
