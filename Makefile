# Set-up and main jobs. Every target creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -n auto --dist loadgroup

.PHONY: test figures theory agreement bench lab clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

## make test: install and run every test
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make figures: install and regenerate every figure into figures/out/
figures: $(STAMP)
	$(BIN)/python -m figures

## make theory: print the table of theory claims (proved and checked)
theory: $(STAMP)
	$(BIN)/python -m theory

## make agreement: predicted against measured critical learning rates
agreement: $(STAMP)
	$(BIN)/python -m figures agreement

## make bench: batched engine against a per-configuration loop (prints JSON last)
bench: $(STAMP)
	$(BIN)/python -m simulate bench

## make lab: open the notebooks in JupyterLab
lab: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[lab]"
	$(BIN)/jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)
