# ocrpress developer and user tasks. `make install` then `.venv/bin/ocrpress convert examples/ -o out/`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (it lies on this project's machines' disk); on a GPU box use
# `make install TORCH=torch` (a CUDA build) and `make install-gpu` for flash-attn.
TORCH ?= torch==2.13.0

.PHONY: install install-gpu install-ray test test-fast lint format examples bench clean

install: $(BIN)/ocrpress

$(BIN)/ocrpress: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install-gpu: install
	$(BIN)/python -m pip install --quiet -e '.[gpu]'

install-ray: install
	$(BIN)/python -m pip install --quiet -e '.[ray]'

# The whole suite, slow tests included (what CI runs).
test: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The quick inner loop: slow tests left out.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check ocrpress tests bench examples
	$(BIN)/ruff format --check ocrpress tests bench examples

format: install
	$(BIN)/ruff format ocrpress tests bench examples

examples: install
	$(BIN)/python examples/make_examples.py
	$(BIN)/ocrpress convert examples/documents -o examples/output -f markdown,json,text --overwrite
	# One layout picture (a photo's would be megabytes): made aside so it leaves the run's stats alone.
	tmp=$$(mktemp -d) && $(BIN)/ocrpress convert examples/documents/two-column-report.pdf \
		-o $$tmp -f layout --pages 1 && mkdir -p examples/output/two-column-report_layout && \
		cp $$tmp/two-column-report_layout/page-0001.png examples/output/two-column-report_layout/; \
		rc=$$?; rm -rf $$tmp; exit $$rc

bench: install
	$(BIN)/python bench/cpu_pipeline.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/resume.py

clean:
	rm -rf out build dist *.egg-info .pytest_cache .ruff_cache
