# GATI: every target creates the virtual environment first when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SHARED ?= ../shared
DEMO   ?= bundles/r18-demo

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The generated Thrift code must match idl/gati.thrift (checked where the compiler is installed).
test: install
	@if command -v $(THRIFT) >/dev/null; then $(MAKE) --no-print-directory idl-check; \
	 else echo "note: thrift compiler not found, skipping idl-check (apt-get install thrift-compiler)"; fi
	$(PY) -m pytest -q tests

# Build caches for the shared ResNet-18 (a class-balanced subset of the training split keeps this
# to a few minutes on 2 cores), then replay 2,000 unseen test:eval images through base and GATI.
demo: install
	$(VENV)/bin/gati build --arch resnet18 --checkpoint $(SHARED)/models/cifar10_resnet18.pt \
	    --dataset cifar10 --data-dir $(SHARED)/data --target 0.97 --device cpu \
	    --train-limit 10000 --variants linear,mlp,fc --force --out $(DEMO)
	$(VENV)/bin/gati eval --bundle $(DEMO) --data-dir $(SHARED)/data --split test:eval --limit 2000

include deploy/local.mk
include deploy/aws.mk

clean:
	rm -rf $(VENV) build dist *.egg-info
