# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs lit-vr1, runs the demo: cold-start SFT, then GRPO, then the report
#   make test   creates .venv with the dev extras, runs the tests
VENV ?= .venv
PYTHON ?= python3
SEED ?= 0
DEMO_OUT ?= runs/demo
BIN := $(VENV)/bin
STAMP := $(VENV)/.lit-vr1-installed

.PHONY: demo quickstart test venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# SFT (configs/sft_synthetic.yaml) -> GRPO (configs/grpo_synthetic.yaml) -> held-out report and PNGs
demo: $(STAMP)
	$(BIN)/python -m lit_vr1.demo --seed $(SEED) --out $(DEMO_OUT)

# GRPO alone on a tiny random model (configs/quickstart.yaml), about 2 minutes
quickstart: $(STAMP)
	$(BIN)/lit-vr1 fit --config configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data/synthetic data/demo
