# GATI: every target creates the virtual environment first when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SHARED ?= ../shared
DEMO   ?= bundles/r18-demo

.PHONY: install test demo idl deploy-local stop-local deploy-aws status-aws destroy-aws clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q tests

# Build caches for the shared ResNet-18 (a class-balanced subset of the training split keeps this
# to a few minutes on 2 cores), then replay 2,000 unseen test:eval images through base and GATI.
demo: install
	$(VENV)/bin/gati build --arch resnet18 --checkpoint $(SHARED)/models/cifar10_resnet18.pt \
	    --dataset cifar10 --data-dir $(SHARED)/data --target 0.97 --device cpu \
	    --train-limit 10000 --out $(DEMO)
	$(VENV)/bin/gati eval --bundle $(DEMO) --data-dir $(SHARED)/data --split test:eval --limit 2000

clean:
	rm -rf $(VENV) build dist *.egg-info
