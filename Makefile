# One-command entry points; each sets up its own virtual environment in .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test notebooks bench bench-recipes student clean

lab: $(STAMP)             ## run notebooks 01-04 headless into out/ and print the results table
	$(BIN)/python scripts/run_lab.py --out out

test: $(STAMP)            ## unit tests + nbval over all notebooks (on the bundled sample)
	$(BIN)/python -m pytest

notebooks: $(STAMP)       ## re-execute the notebooks in place: the stored outputs nbval compares
	$(BIN)/python scripts/run_lab.py --refresh --out build/refresh

bench: $(STAMP)           ## course pipeline vs fast path, printed side by side
	$(BIN)/python benchmarks/bench_pipeline.py

bench-recipes: $(STAMP)   ## notebook 05's recipes on full Fashion-MNIST: 3 epochs, 3 seeds, mean ± sd
	$(BIN)/python benchmarks/bench_recipes.py

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf out build .pytest_cache
