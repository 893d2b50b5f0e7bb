# tritonbn — developer commands. Every target creates the virtual environment it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RESULTS ?= bench_results
PORT ?= 8501
PYTEST_ARGS ?=
GPU_SESSION_OUT ?= gpu-session
GPU_SESSION_ARGS ?=

# CPU machines get the CPU build of torch, installed before anything else so nothing pulls a CUDA build.
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_CUDA),1)
TEST_ENV :=
else
TEST_ENV := TRITON_INTERPRET=1
endif

.PHONY: help venv lint test test-gpu bench check gpu-session dashboard docs-figure clean

help:
	@echo "make test       run the test suite (Triton interpreter on CPU, kernels on CUDA)"
	@echo "make dashboard  serve the dashboard on $(RESULTS)/"
	@echo "make lint       ruff"
	@echo "make docs-figure  regenerate docs/dashboard.png from the app on $(RESULTS)/ (needs Debian's chromium)"
	@echo "make test-gpu   only the tests marked gpu (needs CUDA)"
	@echo "make bench      tritonbn-bench --suite quick (needs CUDA)"
	@echo "make check      tritonbn-check --quick"
	@echo "make gpu-session  tritonbn-gpu-session --out $(GPU_SESSION_OUT) with python3's own packages (needs CUDA;"
	@echo "                 GPU_SESSION_ARGS=--dry-run on any machine whose python3 has torch, e.g. PYTHON=.venv/bin/python)"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifneq ($(HAS_CUDA),1)
	$(PY) -m pip install -q torch==2.13.0
endif
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(PY) -m ruff check tritonbn tests dashboard
	$(PY) -m ruff format --check tritonbn tests dashboard

test: venv
	$(TEST_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: venv
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

bench: venv
	$(VENV)/bin/tritonbn-bench --suite quick --out $(RESULTS)

check: venv
	$(TEST_ENV) $(VENV)/bin/tritonbn-check --quick --out $(RESULTS)

# The whole GPU agenda in one command within a time budget (README, "On a GPU"), with the machine's own
# Python and its packages (torch, triton, pytest; pytest-xdist, pytest-timeout, torchvision if present):
# nothing is installed, so it also runs on a GPU machine without a network.
gpu-session:
	PYTHONPATH=. $(PYTHON) -m tritonbn.gpu_session --out $(GPU_SESSION_OUT) $(GPU_SESSION_ARGS)

# Without CUDA the Gradients page runs tritonbn's kernels in Triton's interpreter (tiny live examples).
dashboard: venv
	@echo "tritonbn dashboard on $(RESULTS)/ -> http://localhost:$(PORT)"
	$(TEST_ENV) TRITONBN_RESULTS=$(RESULTS) $(VENV)/bin/streamlit run dashboard/streamlit_app.py \
		--server.headless true --server.port $(PORT) \
		--browser.gatherUsageStats false --server.fileWatcherType none

# The README figure: the Overview page of the running app in headless Chromium, its top 1400x1000 pixels.
docs-figure: venv
	$(TEST_ENV) $(PY) -m dashboard.screenshot --results $(RESULTS) --page overview --height 1000 --out test-artifacts/docs
	cp test-artifacts/docs/overview.png docs/dashboard.png

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info test-artifacts
