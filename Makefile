# sslbench: `make demo` and `make test` work on a fresh clone (they run setup first).
PY      := .venv/bin/python
STAMP   := .venv/.installed
METHOD  ?= vicreg
SUITE   ?= mini
CKPT    ?=
ARGS    ?=

.PHONY: data setup test test-fast demo demo-all train sweep eval tables bench lint clean clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 sweeps/install_env.py dev,bench
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
	$(PY) -m sweeps.demo $(ARGS)

# The demo's chain for all five methods: sweeps/specs/cpu.yaml per method (local processes),
# the mini battery chained after each run, then tables and plots over all of them.
DEMO_METHODS ?= vicreg barlow_twins simclr byol simsiam
demo-all: setup
	@for m in $(DEMO_METHODS); do \
	  $(PY) -m sweeps.launch --method $$m --spec sweeps/specs/cpu.yaml --cluster local \
	    eval.suite=mini $(ARGS) || exit 1; done
	$(PY) -m results.tables --runs runs --out results/demo-all/tables
	$(PY) -m results.plots --runs runs --out results/demo-all/plots
	@echo "tables: results/demo-all/tables/index.md; plots: results/demo-all/plots/"

train: setup
	$(PY) -m trainer.train $(ARGS)

# make cifar-demo [METHOD=vicreg] [CIFAR_ROOT=<folder with cifar-10-batches-py/>] [ARGS="--epochs 20"]:
# the CIFAR-10 chain on a CPU: sweeps/specs/cifar10.yaml narrowed, the cifar10 eval suite chained,
# the table beside solo-learn's rows (a small CIFAR-format set is written when CIFAR_ROOT is unset).
.PHONY: cifar-demo
cifar-demo: setup
	$(PY) -m sweeps.cifar_demo --method '$(METHOD)' $(if $(CIFAR_ROOT),--cifar-root '$(CIFAR_ROOT)') $(ARGS)

# make sweep METHOD=<name> [SPEC=sweeps/specs/x.yaml] [CLUSTER=auto|slurm|local] [NAME=...]
#            [DRY_RUN=1] [WAIT=1] [key=value ...]   (see sweeps/README.md)
# Dotted key=value words (train.epochs=10 slurm.partition=gpu eval.suite=mini) and seeds=[..]
# go to the launcher. With SPEC and no METHOD on the command line, the spec's methods are kept.
SWEEP_KV = $(foreach v,$(MAKEOVERRIDES),$(if $(or $(findstring .,$(firstword $(subst =, ,$(v)))),$(filter seeds=%,$(v))),'$(v)'))
sweep: setup
	$(PY) -m sweeps.launch $(if $(SPEC),--spec '$(SPEC)') $(if $(or $(filter-out file default undefined,$(origin METHOD)),$(if $(SPEC),,1)),--method '$(METHOD)') --cluster '$(or $(CLUSTER),auto)' $(if $(NAME),--name '$(NAME)') $(if $(DRY_RUN),--dry-run) $(if $(WAIT),--wait) $(SWEEP_KV) $(ARGS)

# make sweep-status [SWEEP=<name or folder>]: state of every run (all sweeps under runs/ if none)
.PHONY: sweep-status
sweep-status: setup
	$(PY) -m sweeps.status $(SWEEP) $(ARGS)

# make probe [SWEEP=<name or folder>] [ARGS="--random-init"]: frozen linear/kNN probes of each
# finished run beside its collapse diagnostics (every sweep under runs/ if none)
.PHONY: probe
probe: setup
	$(PY) -m sweeps.probe $(SWEEP) $(ARGS)

eval: setup
	@test -n "$(CKPT)" || (echo "usage: make eval CKPT=path/to/backbone.pth [SUITE=mini|fast|paper]"; exit 2)
	$(PY) eval/run_all.py $(CKPT) --suite $(SUITE) $(ARGS)

tables: setup
	$(PY) -m results.tables $(ARGS)

bench: setup
	$(PY) benchmarks/throughput.py $(ARGS)

lint: setup
	$(PY) -m ruff check .

# Only what can be rebuilt: caches and generated tables/plots. Run folders (runs/) and eval
# records (results/records/) are results: `make clean-runs CONFIRM=1` removes them on purpose.
GENERATED := results/tables results/plots results/demo results/demo-all
clean:
	rm -rf $(GENERATED) .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

clean-runs:
	@if [ "$(CONFIRM)" != 1 ]; then 	  echo "clean-runs deletes every run folder (runs/) and eval record (results/records/):"; 	  du -sh runs results/records 2>/dev/null || echo "  (neither exists)"; 	  echo "run 'make clean-runs CONFIRM=1' to delete them"; exit 2; fi
	rm -rf runs results/records
