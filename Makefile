# Two commands do all the set-up on a fresh machine: `make quickstart` (the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch comes from pip's configured index: PyPI's Linux wheel is the CUDA build (several GB), so on a CPU machine
# pass TORCH_INDEX=https://download.pytorch.org/whl/cpu; TORCH_SPEC=torch takes the newest release instead.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
LIT_UNLEARN_TOFU_DIR ?= $(abspath ../shared/data/tofu)
export LIT_UNLEARN_TOFU_DIR
OUTPUT_DIR ?= outputs/quickstart

.PHONY: data install quickstart test test-slow lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Checked before the install (minutes), so a wrong data folder is reported at once.
data:
	@test -f "$(LIT_UNLEARN_TOFU_DIR)/full.json" || { echo "make: no TOFU data at $(LIT_UNLEARN_TOFU_DIR) (full.json missing): run make LIT_UNLEARN_TOFU_DIR=/path/to/tofu $(MAKECMDGOALS), the folder holding TOFU's split files" >&2; exit 2; }

quickstart: data install
	$(VENV)/bin/lit-unlearn quickstart --output-dir $(OUTPUT_DIR)

test: data install
	$(PY) -m pytest -q

test-slow: data install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check lit_unlearn callbacks tests benchmarks

clean:
	rm -rf $(VENV) outputs runs .pytest_cache build lit_unlearn.egg-info
