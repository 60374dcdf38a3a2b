# sslbench: `make demo` and `make test` work on a fresh clone (they run setup first).
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
METHOD  ?= vicreg
SUITE   ?= mini
CKPT    ?=
ARGS    ?=

.PHONY: data setup test test-fast demo train sweep eval tables bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,bench]'
	@$(MAKE) --no-print-directory data
	@touch $(STAMP)

# Debian's dataset-fashion-mnist (IDX files in $(FMNIST)), when root and missing.
FMNIST := /usr/share/datasets/fashion-mnist
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "warning: could not install dataset-fashion-mnist; the data code will search/download"; fi

test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm and not ddp" $(ARGS)

demo: setup
	$(PY) -m eval.demo $(ARGS)

train: setup
	$(PY) -m trainer.train $(ARGS)

sweep: setup
	$(PY) -m sweeps.launch --method $(METHOD) $(ARGS)

eval: setup
	@test -n "$(CKPT)" || (echo "usage: make eval CKPT=path/to/backbone.pth [SUITE=mini|fast|paper]"; exit 2)
	$(PY) eval/run_all.py $(CKPT) --suite $(SUITE) $(ARGS)

tables: setup
	$(PY) -m results.tables $(ARGS)

bench: setup
	$(PY) benchmarks/throughput.py $(ARGS)

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf runs demo_out .pytest_cache
