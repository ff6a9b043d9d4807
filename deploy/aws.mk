# AWS targets, included by the Makefile (docs/aws.md). Credentials: the standard AWS chain
# (environment, AWS_PROFILE, instance role). Extra flags: AWS_ARGS="--dry-run" or "--name demo".
PY         ?= .venv/bin/python
AWS_CONFIG ?= deploy/aws.yaml
BUNDLE     ?= bundles/r18
AWS_ARGS   ?=

.PHONY: deploy-aws status-aws destroy-aws

deploy-aws: install
	$(PY) deploy/aws.py deploy --config $(AWS_CONFIG) --bundle $(BUNDLE) $(AWS_ARGS)

status-aws: install
	$(PY) deploy/aws.py status --config $(AWS_CONFIG) $(AWS_ARGS)

destroy-aws: install
	$(PY) deploy/aws.py destroy --config $(AWS_CONFIG) $(AWS_ARGS)
