# Set-up and main jobs. Every target creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
CORE   := $(VENV)/.installed-core
DEV    := $(VENV)/.installed-dev
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

## make test: install and run every test
test: $(DEV)
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
	PYTHONPATH=. $(GPU_PYTHON) -m pytest -q -p no:cacheprovider -k cuda tests/test_losses.py tests/test_train.py
	PYTHONPATH=. $(GPU_PYTHON) -m simulate bench --device cuda

## make lab: open the notebooks in JupyterLab (on 127.0.0.1, with a token; the jupytext
## extension opens the .py notebooks). tests/test_notebooks.py runs them through a Jupyter
## server set up the same way.
lab: $(CORE)
	$(PIP) -e ".[lab]"
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 notebooks

clean-venv:
	rm -rf $(VENV)
