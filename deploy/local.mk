# Thrift code generation and the local multi-process cluster (included by the Makefile).
# deploy-local serves the bundle deploy/local.yaml names (bundles/r18: what `make demo` builds).
# The generated Python is committed so installing needs no compiler; CI runs idl-check, which
# regenerates into a temporary folder and fails on any difference.
THRIFT      ?= thrift
IDL         := idl/gati.thrift
IDL_GEN     := gati/rpc/gen
IDL_OPTIONS := py:package_prefix=gati.rpc.gen.
LOCAL_YAML  ?= deploy/local.yaml

.PHONY: idl idl-check deploy-local stop-local status-local

# The *-remote files are command-line demo clients the compiler writes beside each service.
gen-idl = mkdir -p $(1) && $(THRIFT) --gen $(IDL_OPTIONS) -out $(1) $(IDL) && rm -f $(1)/gati_idl/*-remote

idl:
	rm -rf $(IDL_GEN)
	$(call gen-idl,$(IDL_GEN))

idl-check:
	@tmp=$$(mktemp -d); \
	$(call gen-idl,$$tmp) && \
	diff -r -x __pycache__ $$tmp $(IDL_GEN); rc=$$?; rm -rf $$tmp; \
	if [ $$rc -ne 0 ]; then echo "gati/rpc/gen is stale: run 'make idl' and commit" >&2; fi; exit $$rc

deploy-local: install
	$(PY) deploy/local.py start --config $(LOCAL_YAML)

stop-local:
	$(PY) deploy/local.py stop --config $(LOCAL_YAML)

# Every service: Thrift up or down, and what its /health/ready says.
status-local: install
	$(PY) deploy/local.py status --config $(LOCAL_YAML)
