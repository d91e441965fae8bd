# Two commands do everything: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build this project is tested with; pip takes it from a local wheel cache where one exists.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow test-all clean-venv

# setuptools announces every editable install of a flat layout ("Editable installation. Please be
# careful with folders ..."): a notice about editable installs in general, silenced below.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The chapter's 20-epoch run; extra Hydra overrides go in ARGS, e.g. make run ARGS="seed=1".
run: setup
	$(BIN)/backprop-lab experiment=article $(ARGS)

# The suite without the tests marked slow (about 5 minutes on 2 cores).
test: setup
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

# The slow ones: the full 20-epoch run, repeated kills, an Optuna search, a sweep resume.
test-slow: setup
	$(BIN)/python -m pytest -m slow $(ARGS)

test-all: setup
	$(BIN)/python -m pytest $(ARGS)

clean-venv:
	rm -rf $(VENV)
