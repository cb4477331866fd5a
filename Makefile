# Conveniences over the README's two commands (which need only python3).
.PHONY: run test setup down bench-targeting bench-capacity infra-check infra-generate

run:
	python3 fleet/bootstrap.py up

test:
	python3 fleet/bootstrap.py test

setup:
	python3 fleet/bootstrap.py setup

down:
	.venv/bin/fleet down

bench-targeting: setup
	.venv/bin/fleet bench targeting --campaigns 10000 --requests 5000

bench-capacity: setup
	.venv/bin/fleet bench capacity --region us-east

# infra/terraform: HCL checks, generated Serve configs, terraform fmt/validate, checkov (tests/test_infra.py)
infra-check: setup
	.venv/bin/python -m pytest tests/test_infra.py

infra-generate: setup
	.venv/bin/python -m fleet.infra.rayservice --all
