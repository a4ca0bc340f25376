# tinytrace: `make book` runs the main job, `make test` runs the tests.
# The environment lives in .venv/ at the root; `make install` creates it when absent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pinned first so pip never resolves a multi-GB build on CPU-only machines; override for GPUs
TORCH_SPEC ?= torch==2.13.0
DATA   := data/tinytracing
# scale of the notebook runs: gpu when a CUDA device is visible, else cpu; JOBS notebooks at once
SCALE  ?= $(shell $(BIN)/python -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
JOBS   ?= 1
# a subset of the sections for `make notebooks` (e.g. ONLY=04,05); empty: all six
ONLY   ?=
# pytest-xdist processes of `make test`, each test file on one of them (0: one process)
TEST_JOBS ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: install test book html lab clean notebooks

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

test: install
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile

# The main job: build the shipped test set, show one example, run every section notebook at
# $(SCALE) into book/sections/ (a progress line per notebook), regenerate the pages, build the book.
book: install
	$(BIN)/tinytrace data release --out $(DATA)
	$(BIN)/python -c "from tinytrace.data import load; print(load('$(DATA)', 'base', 'test')[0]['trace'])"
	$(BIN)/tinytrace notebooks run --scale $(SCALE) --jobs $(JOBS)
	$(BIN)/tinytrace notebooks pages
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "open _build/html/index.html"

notebooks: install
	$(BIN)/tinytrace notebooks run --scale $(SCALE) --jobs $(JOBS) $(if $(ONLY),--only $(ONLY))

# Only rebuild the HTML from what is committed.
html: install
	$(BIN)/tinytrace notebooks pages
	$(BIN)/jupyter-book build . -W -n --keep-going

lab: install
	$(BIN)/jupyter lab --allow-root notebooks/

clean:
	rm -rf _build .pytest_cache
