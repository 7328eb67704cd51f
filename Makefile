# Set-up and main jobs. Every target creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
CORE   := $(VENV)/.installed-core
DEV    := $(VENV)/.installed-dev
BROWSER := $(VENV)/.installed-browser
PYTEST_ARGS ?= -n auto --dist loadgroup

.PHONY: test figures theory agreement bench gpu-check lab clean-venv

# the core install: enough for figures, sweeps and the theory report
$(CORE): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	touch $(CORE)

# the test tools, notebooks and Ray on top
$(DEV): $(CORE)
	$(PIP) -e ".[dev]"
	touch $(DEV)

# the browser test's tools: JupyterLab and Playwright, and the system Chromium through apt-get
# when it is missing and we are root. Never fails: without Chromium tests/test_lab_browser.py
# is skipped with a line that says why.
$(BROWSER): $(DEV)
	$(PIP) -e ".[dev,browser]"
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "Chromium not installed (needs root and apt-get): tests/test_lab_browser.py will be skipped"
	touch $(BROWSER)

## make test: install and run every test (the browser test too: see $(BROWSER)). One thread
## per test worker: with xdist's one worker per core, torch's and OpenBLAS's own thread pools
## would oversubscribe the cores (2 cores: 5:15 against 4:00 for the whole suite)
TEST_THREADS ?= 1
test: $(BROWSER)
	OMP_NUM_THREADS=$(TEST_THREADS) OPENBLAS_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

## make figures: install, run the quick sweeps (cached in results/) and draw every figure
figures: $(CORE)
	$(BIN)/python -m figures

## make theory: print the table of theory claims (proved and checked)
theory: $(CORE)
	$(BIN)/python -m theory

## make agreement: predicted against measured critical learning rates
agreement: $(CORE)
	$(BIN)/python -m figures agreement

## make bench: batched engine against a per-configuration loop (prints JSON last)
bench: $(CORE)
	$(BIN)/python -m simulate bench

## make gpu-check: the CUDA tests and the bench on cuda, run by a Python that has a CUDA
## build of torch and the core dependencies (GPU_PYTHON, default python3; no .venv)
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -m pytest -q -p no:cacheprovider -k cuda tests/test_losses.py tests/test_train.py tests/test_mlp_step.py tests/test_encoder_onset.py
	PYTHONPATH=. $(GPU_PYTHON) -m simulate bench --device cuda
	PYTHONPATH=. $(GPU_PYTHON) -m simulate bench --model mlp --device cuda --optimizer sgd,lars

## make lab: open the notebooks in JupyterLab (on 127.0.0.1, with a token; the jupytext
## extension opens the .py notebooks: Open With -> Notebook). tests/test_notebooks.py runs them
## through a Jupyter server set up the same way, tests/test_lab_browser.py in JupyterLab in
## Chromium. LAB_ARGS adds options (as root: make lab LAB_ARGS=--allow-root).
LAB_ARGS ?=
lab: $(CORE)
	$(PIP) -e ".[lab]"
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 $(LAB_ARGS) notebooks

clean-venv:
	rm -rf $(VENV)
