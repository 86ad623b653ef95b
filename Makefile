# sora_jax: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# ACCEL=cuda12, cuda13 or tpu adds the accelerator build of the pinned jax (see BUILD.md).
ACCEL ?= cpu
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.lock)
STAMP := $(VENV)/.installed-$(ACCEL)-$(shell cat requirements.lock setup.cfg | cksum | cut -d' ' -f1)
OUT ?= out/demo

.PHONY: install test lint format demo clean

install: $(STAMP)

$(STAMP): requirements.lock setup.cfg
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@if [ "$(ACCEL)" != cpu ]; then $(PY) -m pip install -q "jax[$(ACCEL)]==$(JAX_VERSION)"; fi
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" --durations=20 tests

# The demo: data -> tokenizer -> training on CPU -> samples -> prompt-following
# evaluation against its aims. Rerunning resumes: the data is kept and training
# continues from its last checkpoint. SEED=K trains with another seed.
SEED ?= 0
DEMO_AIMS := color:0.95,shape:0.7,motion:0.75,background:0.95,one_object:0.9
EDIT_CLIPS ?= 8
# Objects 0.35-0.6 of the frame's shorter side: the demo's 16x20-pixel clips show them at
# 6-12 pixels (docs/performance.md, "4x4x4 patches"). Data made with other options is
# remade (with its tokenizer) rather than reused.
DEMO_DATA := --num_examples=10000 --seed=0 --min_object=0.35 --max_object=0.6
DATA_STAMP := $(OUT)/data/.made-with-$(shell echo $(DEMO_DATA) | cksum | cut -d' ' -f1)
demo: install
	@test -f $(DATA_STAMP) || { rm -rf $(OUT)/data && $(PY) -m data_pipelines.synthetic --output_dir=$(OUT)/data $(DEMO_DATA) && touch $(DATA_STAMP); }
	@test -f $(OUT)/data/tokenizer.model || $(PY) -m data_pipelines.tokenizer --data_dir=$(OUT)/data --vocab_size=128
	$(PY) -m sora_jax.train --config=experiments/demo.py --workdir=$(OUT)/run --config.data.data_dir=$(OUT)/data --config.seed=$(SEED)
	$(PY) -m sora_jax.sample --workdir=$(OUT)/run --prompts_file=experiments/demo_prompts.jsonl --output=$(OUT)/samples
	$(PY) -m sora_jax.evaluate --workdir=$(OUT)/run --data_dir=$(OUT)/data --output=$(OUT)/eval --aims=$(DEMO_AIMS)
	$(PY) -m sora_jax.evaluate --workdir=$(OUT)/run --data_dir=$(OUT)/data --output=$(OUT)/edits --evals=editing --num_clips=$(EDIT_CLIPS)
	@echo
	@echo "Demo videos: $(OUT)/samples (contact sheet: $(OUT)/samples/contact_sheet.png)"
	@echo "Prompt following: $(OUT)/eval/eval_results.json, $(OUT)/eval/eval_contact_sheet.png"
	@echo "Edits, one of every mode: $(OUT)/edits/MODE.mp4 (contact sheet: $(OUT)/edits/editing_contact_sheet.png)"
	@echo "Logs: $(OUT)/run/logs/train.log, $(OUT)/samples/logs, $(OUT)/eval/logs, $(OUT)/edits/logs"

clean:
	rm -rf $(VENV) out
