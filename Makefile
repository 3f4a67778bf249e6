# Two entry points: `make serve` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# Set to https://download.pytorch.org/whl/cpu to get the small CPU build of torch.
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: install serve test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_INDEX) -e '.[dev,train]'
	# insightface (tests' and benchmarks' reference only) without its own requirements: they
	# would add opencv-python and the CPU onnxruntime next to the headless / GPU builds.
	$(PY) -m pip install -q --no-deps insightface==2.1
	touch $@

install: $(VENV)/.installed

serve: install
	PY=$(PY) scripts/serve.sh

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
