# make demo   — set up .venv, then run every notebook on the tiny profile (regenerates committed results)
# make test   — set up .venv with dev requirements, then run the tests
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= tiny
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup setup-dev demo test notebooks notebooks-sync tensorboard bench-sft bench-dpo bench-generate bench-rloo clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

demo: setup notebooks

notebooks:
	@for nb in $(NOTEBOOKS); do \
		echo "=== $$nb (PROFILE=$(PROFILE))"; \
		PROFILE=$(PROFILE) $(PY) -m helpers run-notebook $$nb || exit 1; \
	done

# notebooks/NN.py (jupytext) are the sources; this rewrites the paired .ipynb (no outputs)
notebooks-sync: setup
	$(PY) tools/sync_notebooks.py

test: setup-dev
	$(PY) -m pytest -q tests

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir tensorboard_events

bench-sft: setup
	$(PY) benchmarks/bench_sft.py

bench-dpo: setup
	$(PY) benchmarks/bench_dpo.py

bench-generate: setup
	$(PY) benchmarks/bench_generate.py

bench-rloo: setup
	$(PY) benchmarks/bench_rloo.py

clean:
	rm -rf data checkpoints outputs
