# Set-up and entry points. `make main` and `make test` work on a fresh machine (Python >= 3.11, no GPU).
# The CPU set-up path pins torch through constraints-cpu.txt (an unpinned torch pulls a CUDA build of several GB).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/sae_synthetic.yaml

.PHONY: setup main test bench clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

main: setup
	$(BIN)/lightning fit --config $(CONFIG)

test: setup
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_sae_step.py

clean:
	rm -rf $(VENV) checkpoints/*/
