# EndoFed: the two commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean venv browser

venv: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"

# Re-install only when the pinned inputs change.
$(STAMP): pyproject.toml requirements.lock | $(VENV)/bin/python
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/endofed demo --out runs/demo

# Headless Chromium + chromedriver for the dashboard's browser tests (tests/dashboard/),
# installed from Debian only when missing (needs root, as in CI).
browser:
	@if [ ! -x /usr/bin/chromedriver ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

test: $(STAMP) browser
	$(PY) -m pytest -q --durations=25

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) tools/lint_imports.py

clean:
	rm -rf runs/demo .pytest_cache

# Research grid on the real data sets beside the checkout (docs/EXPERIMENTS.md).
# Override e.g. `make experiment EXPERIMENT_ARGS="--rounds 1 --seeds 0 --arms central"`.
DATA            ?= ../shared/data
EXPERIMENT_OUT  ?= runs/experiment
EXPERIMENT_ARGS ?=
.PHONY: experiment
experiment: $(STAMP)
	@if [ -d "$(DATA)/kvasir-seg" ] && [ -d "$(DATA)/normal-frames" ]; then \
	  $(VENV)/bin/endofed simulate --data "$(DATA)/kvasir-seg,$(DATA)/normal-frames" \
	    --sites 3 --partition iid --arms central,local,fedavg,fedprox,fedadam,fedmedian \
	    --dp none,8,4,1 --rounds 5 --local-epochs 2 --preset lite0 \
	    --batch-size 16 --seeds 0,1,2 -c proximal-mu=0.01 --out $(EXPERIMENT_OUT) $(EXPERIMENT_ARGS); \
	else \
	  echo "make experiment: real data missing ($(DATA)/kvasir-seg and $(DATA)/normal-frames);" \
	       "set DATA=/path/to/data or see docs/EXPERIMENTS.md for a synthetic run"; \
	fi
