# poc1-acceptance — one entry point per job. Run as root on Debian 12 (the embedded lab needs it).
SHELL := /bin/bash
PY ?= python3
HOSTS ?= local
export LITELLM_LOCAL_MODEL_COST_MAP := True
APT_PACKAGES := postgresql openssh-server openssh-client systemd-container debootstrap iproute2 chromium
TEST_ARGS ?=

.PHONY: help deps validate regression verify test test-fast bench deploy lab-up lab-down lab-status clean
REGRESSION_ARGS ?=
VALIDATE_ARGS ?=
VERIFY_ARGS ?=

help:
	@echo "make validate [HOSTS=local|lab]  run the acceptance checks, write POC-1/evidence/ + report.html"
	@echo "make test                        install everything, bring up the embedded lab, run the project's tests"
	@echo "make regression [HOSTS=lab]      scheduled-style run: POC-1/runs/<run>/, history.jsonl, trend page, alarms"
	@echo "make verify BUNDLE=path          check a bundle (tarball or directory) offline [VERIFY_ARGS=...]"
	@echo "make bench                       the logger benchmarks (tests/benchmarks)"
	@echo "make deploy HOSTS=lab            deploy/ansible/site.yml on the real VMs [DEPLOY_ARGS=--check --diff]"
	@echo "make lab-up [GATEWAYS=N] | lab-down | lab-status   (N gateway hosts behind the one database)"

## deps: Debian packages (as root) and the Python packages listed in pyproject.toml
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
	  > build-requirements.txt
	@$(PY) -m pip install -q --disable-pip-version-check -r build-requirements.txt
	@rm -f build-requirements.txt

validate: deps
	$(PY) -m tools.validate --hosts $(HOSTS) $(VALIDATE_ARGS)

regression: deps
	$(PY) -m tools.regression --hosts $(HOSTS) $(REGRESSION_ARGS)

## verify: offline, nothing installed (a reviewer's machine): hashes, signature, verdict, summary, report
verify:
	@test -n "$(BUNDLE)" || { echo "usage: make verify BUNDLE=POC-1/evidence-<run>.tar.gz (or a dir)"; exit 2; }
	$(PY) -m tools.verify $(VERIFY_ARGS) "$(BUNDLE)"

## test: the project's own tests; the lab is brought up first and torn down by the last test file
test: deps
	POC1_LAB_GATEWAYS=1 $(PY) -m lab up
	$(PY) -m pytest tests --ignore=tests/benchmarks -p no:cacheprovider -q -rfEs --durations=40 $(TEST_ARGS)

## test-fast: only the tests that need no lab
test-fast: deps
	$(PY) -m pytest tests -p no:cacheprovider -q -m "not lab" $(TEST_ARGS)

bench: deps
	$(PY) -m pytest tests/benchmarks -p no:cacheprovider -q

## deploy: the runbook as a playbook, on the hosts of deploy/ansible/inventories/$(HOSTS).yml. Never run
## by tests or CI (the embedded lab runs the same playbook on every `lab up`; again: python -m lab deploy)
DEPLOY_ARGS ?=
deploy: deps
	@test "$(HOSTS)" != local || { echo "the embedded lab is deployed by 'make lab-up' (again: $(PY) -m lab deploy)"; exit 2; }
	@test -f deploy/ansible/inventories/$(HOSTS).yml || { echo "no deploy/ansible/inventories/$(HOSTS).yml"; exit 2; }
	ANSIBLE_CONFIG=deploy/ansible/ansible.cfg ansible-playbook -i deploy/ansible/inventories/$(HOSTS).yml \
	  deploy/ansible/site.yml $(DEPLOY_ARGS)

## lab-up [GATEWAYS=N]: N gateway hosts (1-4, default: what the lab that is up has, else 1) behind the one db
GATEWAYS ?=
lab-up:
	$(if $(GATEWAYS),POC1_LAB_GATEWAYS=$(GATEWAYS) )$(PY) -m lab up
lab-down:
	$(PY) -m lab down
lab-status:
	$(PY) -m lab status

clean:
	rm -rf POC-1/evidence/* POC-1/evidence-*.tar.gz .benchmarks
