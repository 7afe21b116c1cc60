# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 7860
# The tests run on one torch thread each (tests/conftest.py): one worker per core, whole files to a worker
# (module fixtures, such as the toy reproduction, are built once)
TEST_WORKERS ?= 2
PYTEST := HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh "$(VENV)" "$(PYTHON)"
	touch $@

demo: setup  ## the Gradio demo on the embedded zoo models, no network
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) app.py --host $(HOST) --port $(PORT)

test: setup  ## the whole test suite (its 15 slowest tests listed last: what keeps it from staying fast)
	$(PYTEST) --durations=15

test-fast: setup  ## the suite without the slow, browser and multi-process tests: the edit-test loop
	$(PYTEST) -q -m "not slow and not browser"

bench: setup  ## the speed benchmarks (prints ratios measured side by side)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
