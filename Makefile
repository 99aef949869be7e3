# The README's two commands: `make run` and `make test`. Both create .venv on first use and
# are fast afterwards (the install step reruns only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this kind of machine has on local disk; override
# on another machine, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,plot,parquet,ray,tensorboard,mlflow
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: run test venv clean studies

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/initsweep run configs/grid.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Every study of docs/studies/: its runs (resumable: a rerun trains only what is missing),
# then the archived exports (docs/studies/data/) and the pages' tables, rebuilt from them.
# STUDY_ARGS passes options to every run, e.g. STUDY_ARGS='-S train.precision=fp32' on a CPU
# without bf16 (other run ids: the archive then no longer matches the configs' plans).
STUDIES := tutorial he2015 glorot2010 edge_of_chaos
STUDY_RESULTS ?= results/studies
studies: $(STAMP)
	@start=$$(date +%s); for study in $(STUDIES); do \
	  $(BIN)/initsweep run configs/$$study.yaml --results $(STUDY_RESULTS)/$$study -q $(STUDY_ARGS) || exit $$?; \
	done; \
	$(BIN)/python docs/studies/build.py --results $(STUDY_RESULTS) && \
	echo "make studies: $$(( $$(date +%s) - start )) s"

clean:
	rm -rf $(VENV) .pytest_cache
