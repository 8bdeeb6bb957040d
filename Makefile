# One-command entry points; each sets up its own virtual environment in .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test notebooks bench bench-recipes jupyter student clean grade

lab: $(STAMP)             ## run notebooks 01-05 headless into out/ and print the results table
	@$(BIN)/python scripts/run_lab.py --out out

test: $(STAMP)            ## unit tests + nbval over all notebooks (on the bundled sample)
	$(BIN)/python -m pytest

.PHONY: check
check: $(STAMP)           ## the grader's per-task report for this checkout (no hidden tests): a student's self-check
	$(BIN)/python -m labkit.grade --self

notebooks: $(STAMP)       ## re-execute the notebooks in place: the stored outputs nbval compares
	$(BIN)/python scripts/run_lab.py --refresh --out build/refresh

jupyter: $(STAMP)         ## JupyterLab on the notebooks, from the project's environment
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)           ## course pipeline vs fast path, printed side by side
	$(BIN)/python benchmarks/bench_pipeline.py

grade: $(STAMP)           ## grade submissions: make grade SUBMISSIONS="folder-or-zips..." [GRADE_OUT=grades JOBS=2]
	@test -n "$(SUBMISSIONS)" || { echo 'usage: make grade SUBMISSIONS="class/ or a.zip b/ ..."'; exit 2; }
	$(BIN)/python -m labkit.grade $(SUBMISSIONS) --out $(or $(GRADE_OUT),grades) --jobs $(or $(JOBS),2)

bench-recipes: $(STAMP)   ## notebook 05's recipes on full Fashion-MNIST: 3 epochs, 3 seeds, mean ± sd
	$(BIN)/python benchmarks/bench_recipes.py

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,lab]"
	touch $(STAMP)

clean:
	rm -rf out build .pytest_cache
