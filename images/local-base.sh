#!/usr/bin/env bash
# Make the local stand-in for the upstream base images: a Debian bookworm rootfs with Python 3.11
# (debootstrap --variant=minbase) imported into podman as LOCAL_BASE_IMAGE (images/versions.env).
# images/build.sh --local passes it as PYTHON_IMAGE and CUDA_IMAGE, so the same Dockerfiles build
# without a container registry. Idempotent: an existing image is reused (--force remakes it).
#
#   images/local-base.sh [--force]      needs root, debootstrap and podman
#   DEBIAN_MIRROR=http://... images/local-base.sh     (default http://deb.debian.org/debian)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
set -a
# shellcheck source=images/versions.env
source "${here}/versions.env"
set +a
export CONTAINERS_CONF="${CONTAINERS_CONF:-${here}/containers.conf}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

force=0
for arg in "$@"; do
  case "${arg}" in
    --force) force=1 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "local-base.sh: unknown argument '${arg}' (expected --force)" >&2; exit 2 ;;
  esac
done

if [[ ${force} -eq 0 ]] && podman image exists "${LOCAL_BASE_IMAGE}"; then
  echo "# local base ${LOCAL_BASE_IMAGE}: present, reused (--force remakes it)" >&2
  exit 0
fi
for tool in debootstrap podman; do
  command -v "${tool}" >/dev/null || {
    echo "local-base.sh: ${tool} not found (apt-get install podman runc debootstrap)" >&2; exit 1; }
done

started=${SECONDS}
rootfs="$(mktemp -d /var/tmp/r1vflow-bookworm.XXXXXX)"
trap 'rm -rf "${rootfs}"' EXIT
# python3-venv: the Dockerfiles make /opt/venv with it (the python:*-slim images have venv too);
# ca-certificates: pip's TLS (python:*-slim images carry it as well).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "${rootfs}" "${mirror}" >"${rootfs}.log" 2>&1 \
  || { tail -20 "${rootfs}.log" >&2; echo "local-base.sh: debootstrap failed (log ${rootfs}.log)" >&2; exit 1; }
rm -f "${rootfs}.log"
# No apt lists or caches in the image: every Dockerfile runs apt-get update itself.
rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin "${rootfs}"/var/cache/apt/archives/*.deb
echo "# local base: debootstrap $((SECONDS - started)) s" >&2
tar -C "${rootfs}" -c . | podman import --change 'CMD ["/bin/bash"]' - "${LOCAL_BASE_IMAGE}" >/dev/null
echo "# local base ${LOCAL_BASE_IMAGE}: made in $((SECONDS - started)) s," \
  "$(podman image inspect --format '{{.Size}}' "${LOCAL_BASE_IMAGE}") bytes" >&2
