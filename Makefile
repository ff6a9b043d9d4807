# GATI: every target creates the virtual environment first when it is missing.
# After any of them the command is .venv/bin/gati (or `source .venv/bin/activate`, then gati).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The shared data and checkpoints: SHARED=..., else $GATI_SHARED, else ../shared. The tests get it
# as GATI_SHARED, so an override reaches them too.
SHARED ?= $(or $(GATI_SHARED),../shared)
# The demo's bundle is the one deploy/local.yaml serves, so `make demo` then `make deploy-local` works.
DEMO   ?= bundles/r18

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
	GATI_SHARED=$(abspath $(SHARED)) $(PY) -m pytest -q tests

# Build caches for the shared ResNet-18 when $(DEMO) does not exist yet (a class-balanced subset of
# the training split keeps this to a few minutes on 2 cores; delete the folder to rebuild), then
# replay 2,000 unseen test:eval images through base and GATI.
demo: install $(DEMO)/manifest.yaml
	$(VENV)/bin/gati eval --bundle $(DEMO) --data-dir $(SHARED)/data --split test:eval --limit 2000

$(DEMO)/manifest.yaml: | install
	$(VENV)/bin/gati build --arch resnet18 --checkpoint $(SHARED)/models/cifar10_resnet18.pt \
	    --dataset cifar10 --data-dir $(SHARED)/data --target 0.97 --device cpu \
	    --train-limit 10000 --variants linear,mlp,fc --out $(DEMO)

include deploy/local.mk
include deploy/aws.mk

clean:
	rm -rf $(VENV) build dist *.egg-info
