# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs lit-vr1, runs the demo: cold-start SFT, then GRPO, then the report
#   make test   creates .venv with the dev extras, runs the tests (the fast, real checks)
# make test-learning runs the slow learning proofs (the demo at several seeds); .ci/run runs both.
VENV ?= .venv
PYTHON ?= python3
SEED ?= 0
SEEDS ?= 0
DEMO_OUT ?=
TASK ?= rec
# a TASK exported by the shell is not a demo choice: only `make demo TASK=...` picks one
ifeq ($(origin TASK),environment)
TASK := rec
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.lit-vr1-installed

.PHONY: demo quickstart test test-learning gpu-wheels venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# SFT (configs/sft_synthetic.yaml) -> GRPO (configs/grpo_synthetic.yaml) -> held-out report and PNGs
# TASK=ood: the same runs, also reported on out-of-domain held-out splits (lit_vr1/ood.py)
# TASK=detection: SFT (configs/sft_detection.yaml) -> GRPO with Vision-R1's rewards (configs/grpo_detection.yaml)
# TASK=reasoning: think-then-count SFT (configs/sft_reasoning.yaml) -> GRPO with HFRRF under PTST
#   (configs/grpo_reasoning.yaml), and the same GRPO without PTST
# TASK=label_free: the same cold start, a judge SFT'd on labelled pairs of other images (configs/judge_label_free.yaml),
#   served by the demo (python -m lit_vr1.rewards.serve), GRPO rewarded by its score alone (configs/grpo_label_free.yaml)
DEMO_TASK_rec :=
DEMO_TASK_ood := --ood all
DEMO_TASK_detection := --task detection
DEMO_TASK_reasoning := --task reasoning
DEMO_TASK_label_free := --task label_free
demo: $(STAMP)
	@test -n "$(filter $(TASK),rec ood detection reasoning label_free)" || { echo "make demo: TASK=$(TASK) is not a demo; choose rec, ood, detection, reasoning or label_free" >&2; exit 2; }
	$(BIN)/python -m lit_vr1.demo --seed $(SEED) $(if $(DEMO_OUT),--out $(DEMO_OUT)) $(DEMO_TASK_$(TASK))

# GRPO on a tiny random model after a short built-in cold start (configs/quickstart.yaml), about a minute
quickstart: $(STAMP)
	$(BIN)/lit-vr1 fit --config configs/quickstart.yaml

# the fast checks in TEST_WORKERS pytest-xdist workers of one thread each (OMP_NUM_THREADS=1 also for the
# processes a test starts: a CLI fit, a notebook kernel, a judge server); TEST_WORKERS=0: in one process
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal)
test: $(STAMP)
	$(if $(XDIST),OMP_NUM_THREADS=1 LIT_VR1_TEST_THREADS=1) $(BIN)/python -m pytest -q -m "not learning" $(XDIST)

# the learning proofs in three pytest processes of one thread each (tests/run_learning.py: REC, detection,
# reasoning + label-free), each task's demo on seed 0 with --no-validation (the same models, no held-out
# curves); SEEDS=0,1,2 runs the REC and
# reasoning tests on three seeds (about 1.7x the time); -rP prints each test's figures
test-learning: $(STAMP)
	LIT_VR1_LEARNING_SEEDS=$(SEEDS) $(BIN)/python tests/run_learning.py

# The wheels benchmarks/gpu_check.sh installs on a lent GPU machine (Python 3.12, x86-64), into .whl/ (ignored):
#   device run with carry [.whl] and command: bash benchmarks/gpu_check.sh
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform any -d .whl -r benchmarks/gpu_wheels.txt

clean:
	rm -rf $(VENV) runs data/synthetic data/demo data/demo_rl data/demo_detection data/demo_detection_rl data/demo_reasoning data/demo_reasoning_rl data/demo_label_free_rl data/demo_label_free_judge
