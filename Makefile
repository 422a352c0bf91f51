# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Development checkouts sit beside ../shared, which holds MNIST.
ifeq ($(SHARDWREN_DATA_DIR),)
ifneq ($(wildcard ../shared/datasets/mnist),)
export SHARDWREN_DATA_DIR := $(abspath ../shared/datasets)
endif
endif

.PHONY: install demo test lint bench faults docs-images clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# s3fs, boto3 and moto resolve together (aiobotocore pins botocore).
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shardwren demo

test: $(STAMP)
	$(BIN)/python -m pytest

# ruff (configuration in pyproject.toml) on everything, mypy on src/.
lint: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The chaos suite: SIGKILL, SIGSTOP, memory exhaustion, store errors, Dask worker removal and a
# killed driver, during MNIST k-NN and a matmul, on the local backend and a Dask cluster started
# on 127.0.0.1. The answers must not change; nothing may hang or be left behind.
faults: $(STAMP)
	$(BIN)/python tools/faults.py --markdown

# The README's timeline picture: a real MNIST k-NN job.
docs-images: $(STAMP)
	mkdir -p docs
	$(BIN)/shardwren knn --dataset mnist --plot docs/timeline-mnist-knn.png

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results

# The environment matrix (tools/test_matrix.py): a core-only install, the full optional
# stack, Python 3.13 and the lowest allowed versions, each in its own virtualenv under
# .matrix/. MATRIX_ARGS="--legs core,py313 --short" picks legs and CI's short subset.
.PHONY: test-matrix
test-matrix:
	$(PYTHON) tools/test_matrix.py $(MATRIX_ARGS)
