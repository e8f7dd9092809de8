# make demo   — set up .venv, then run every notebook on the tiny profile (regenerates committed results)
# make test   — set up .venv with dev requirements, then run the tests (make test-browser: the browser tests)
# make test-distributed — the loop under `accelerate launch` with 2 CPU processes (~3 minutes on 2 cores)
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= tiny
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup setup-dev demo test test-distributed test-browser notebooks notebooks-sync experiment robustness qwen-smoke tensorboard bench-sft bench-dpo bench-generate \
	bench-rloo bench-memory bench-sample bench-qlora qwen-budget gpu-check serve iterate clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .     # the helpers package, importable from notebooks/, tests/, benchmarks/
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

demo: setup notebooks

# RESTART=1: every stage trains again (the demo regenerates its results); RESTART=0 keeps finished stages.
# CONFIG=FILE: a YAML file of overrides on top of the profile for every notebook (`python -m helpers config` prints
# a commented starting file); with it the demo's results are those of your settings, not the committed ones
RESTART ?= 1
CONFIG ?=
# each notebook prints its cells as they start and end, progress bars as text, "notebook i/n, elapsed, estimated
# remaining", and on failure the failing cell with its traceback
notebooks:
	@start=$$(date +%s); i=0; total=$(words $(NOTEBOOKS)); for nb in $(NOTEBOOKS); do i=$$((i + 1)); \
		PROFILE=$(PROFILE) RESTART=$(RESTART) CONFIG=$(if $(CONFIG),$(abspath $(CONFIG)),) \
			$(PY) -m helpers run-notebook $$nb --index $$i --total $$total \
			--started $$start || exit 1; \
	done

# notebooks/NN.py (jupytext) are the sources; this rewrites the paired .ipynb (no outputs)
notebooks-sync: setup
	$(PY) tools/sync_notebooks.py

# the masked-vs-unmasked experiment (seeds at full length, the confound controlled, the weight × data-size grid):
# ~1.5 h on 2 cores (85 min measured, 2 shards); resumable (each cell cached under outputs/); its results are
# committed and 02 shows them.
# JOBS processes share the grid, one thread each (tiny SFT runs as fast on one thread as on two); then one
# plain run reads every cached cell and writes the results. On one GPU keep JOBS=1.
JOBS ?= $(if $(filter tiny smoke,$(PROFILE)),2,1)
experiment: setup
	@if [ $(JOBS) -gt 1 ]; then for k in $$(seq 0 $$(($(JOBS) - 1))); do \
	  OMP_NUM_THREADS=1 PROFILE=$(PROFILE) $(PY) -m helpers experiment --shard $$k/$(JOBS) & done; wait; fi
	PROFILE=$(PROFILE) $(PY) -m helpers experiment

# the chain for several base models (robustness.seeds; TUNING=1: the tuning seeds), every stage cached under
# checkpoints/<profile>/robustness/, resumable; JOBS processes share the seeds, one thread each. Each finished
# chain is recorded under evaluation_results/<profile>/<NAME>_runs/ (commit it: the round goes on elsewhere);
# SET="section__field=value …" and NAME=… run a candidate setting's round beside the committed one
TUNING ?= 0
NAME ?=
SET ?=
ROBUSTNESS_ARGS = $(if $(filter 1,$(TUNING)),--tuning,) $(if $(NAME),--name $(NAME),) $(foreach s,$(SET),--set $(s))
robustness: setup
	PROFILE=$(PROFILE) $(PY) -m helpers data --datasets-only $(foreach s,$(SET),--set $(s))   # once, before the shards
	@if [ $(JOBS) -gt 1 ]; then for k in $$(seq 0 $$(($(JOBS) - 1))); do \
	  OMP_NUM_THREADS=1 PROFILE=$(PROFILE) $(PY) -m helpers robustness $(ROBUSTNESS_ARGS) --shard $$k/$(JOBS) & done; \
	  wait; fi
	OMP_NUM_THREADS=1 PROFILE=$(PROFILE) $(PY) -m helpers robustness $(ROBUSTNESS_ARGS)

# the qwen code path end to end on CPU: a local Qwen2.5-architecture checkpoint (not a project requirement:
# ../shared/tools/get-real-qwen.sh DIR builds one; tools/make_tied_qwen.py makes its tied-embedding twin)
QWEN_MODEL_DIR ?= $(HOME)/.cache/real-qwen2.5-0.5b
QWEN_SMOKE_OUTPUT ?= /tmp/qwen-smoke
qwen-smoke: setup
	@test -f "$(QWEN_MODEL_DIR)/config.json" || { echo "no checkpoint in QWEN_MODEL_DIR=$(QWEN_MODEL_DIR):" \
		"build one with ../shared/tools/get-real-qwen.sh DIR, then make qwen-smoke QWEN_MODEL_DIR=DIR"; exit 2; }
	@start=$$(date +%s); \
	QWEN_MODEL_DIR=$(QWEN_MODEL_DIR) OUTPUT_DIR=$(QWEN_SMOKE_OUTPUT) $(MAKE) --no-print-directory notebooks \
		PROFILE=qwen_smoke || exit 1; \
	echo "qwen-smoke: all notebooks in $$(( $$(date +%s) - start )) s; outputs under $(QWEN_SMOKE_OUTPUT)"

test: setup-dev
	$(PY) -m pytest -q tests -m "not distributed"

# 2 processes vs 1 with the doubled batch (SFT, DPO), RLOO's per-process prompts, a resume under 2 processes,
# every stage under 1 and 2 processes
test-distributed: setup-dev
	$(PY) -m pytest -q tests/test_distributed.py -m distributed

# the chat notebook in JupyterLab and TensorBoard, driven in headless Chromium (a smoke pipeline first: 3–4 min);
# needs chromium + chromium-driver (as root: apt-get install -y chromium chromium-driver), else skipped with why.
# SCREENSHOTS=1 also writes assets/chat_widget.png and assets/tensorboard.png
test-browser: setup-dev
	$(PY) -m pytest -q -rs --browser tests/test_browser.py

# another DPO round from `final`: its samples chosen over dpo's (the brief's pipeline b) vs SPIN's rule, same pairs
iterate: setup
	PROFILE=$(PROFILE) $(PY) -m helpers iterate

# an OpenAI-compatible chat-completions endpoint for a checkpoint (transformers' server, guarded) on 127.0.0.1
MODEL ?= checkpoints/$(PROFILE)/final
PORT ?= 8000
serve: setup
	PROFILE=$(PROFILE) $(PY) -m helpers serve --model $(MODEL) --port $(PORT)

# http://localhost:6006 (TB_HOST=0.0.0.0 to reach it from another machine)
TB_HOST ?= 127.0.0.1
TB_PORT ?= 6006
tensorboard: setup
	$(VENV)/bin/tensorboard --logdir tensorboard_events --host $(TB_HOST) --port $(TB_PORT)

bench-sft: setup
	$(PY) benchmarks/bench_sft.py

bench-dpo: setup
	$(PY) benchmarks/bench_dpo.py

bench-generate: setup
	$(PY) benchmarks/bench_generate.py

bench-rloo: setup
	$(PY) benchmarks/bench_rloo.py

bench-memory: setup
	$(PY) benchmarks/bench_memory.py

bench-sample: setup
	QWEN_MODEL_DIR=$(QWEN_MODEL_DIR) $(PY) benchmarks/bench_sample.py

# QLoRA: weight memory and one LoRA step's time, fp32 vs 8-bit vs 4-bit NF4, at Qwen2.5-0.5B's shapes (CPU or CUDA)
bench-qlora: setup
	QWEN_MODEL_DIR=$(QWEN_MODEL_DIR) $(PY) benchmarks/bench_qlora.py

# the qwen pipeline's estimated hours per stage on one 24 GB card (CONFIG=docs/qwen_full.yml: the larger budgets)
qwen-budget: setup
	$(PY) benchmarks/qwen_budget.py $(if $(CONFIG),--config $(CONFIG))

# every qwen stage for 2-3 steps at the preset's shapes on a GPU: peak memory, step time, decoding steps/s (eager vs
# compiled); on a machine without one, the same script at tiny shapes (what make test runs)
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf data checkpoints outputs
