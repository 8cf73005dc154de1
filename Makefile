# DSS — `make run` serves the API on the embedded default; `make test` runs lint and the test suite.
# Both set up what they need: a virtualenv in .venv from the pinned lock files.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HCA_VENV := .venv-hca
DBIO_VENV := .venv-dbio
NODE_TOOLS := .node-tools
OPENSEARCH := .opensearch/opensearch-2.19.6
ELASTICSEARCH7 := .elasticsearch/elasticsearch-7.10.2
PYTEST_ARGS ?=
CHECKOV_VENV := .venv-checkov
# The Lambdas' dependency layer, cached by the hash of the lock file (scripts/package.py layer_zip()).
LAMBDA_LAYER := .lambda-layer/$(shell sha256sum requirements.txt 2>/dev/null | cut -c1-16)/layer.zip
STAGE ?= $(or $(DSS_DEPLOYMENT_STAGE),dev)

.PHONY: run test lint unit bench bench-quick fuzz lock clean hca-client opensearch elasticsearch7 dbio-client browser \
	lambda-layer package plan-infra deploy-infra deploy destroy

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip<26.3"  # chalice 1.34 refuses pip 26.3
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# The real `hca` client, in its own virtualenv (it pins old dependencies). On Python 3.11 it needs a
# newer tenacity than it asks for (its own pin uses asyncio.coroutine, removed in 3.11).
$(HCA_VENV)/.installed:
	test -x $(HCA_VENV)/bin/python || $(PYTHON) -m venv $(HCA_VENV)
	$(HCA_VENV)/bin/python -m pip install --quiet --upgrade "pip<26.3"
	$(HCA_VENV)/bin/python -m pip install --quiet hca==7.0.1
	$(HCA_VENV)/bin/python -m pip install --quiet 'tenacity>=8,<9'
	touch $@

hca-client: $(HCA_VENV)/.installed

# The DataBiosphere fork of the client (`dbio`): 1.0.0 is its last release that installs from PyPI.
$(DBIO_VENV)/.installed:
	test -x $(DBIO_VENV)/bin/python || $(PYTHON) -m venv $(DBIO_VENV)
	$(DBIO_VENV)/bin/python -m pip install --quiet --upgrade "pip<26.3"
	$(DBIO_VENV)/bin/python -m pip install --quiet dbio-cli==1.0.0
	$(DBIO_VENV)/bin/python -m pip install --quiet 'tenacity>=8,<9'  # as for hca: 5.0 fails to import on 3.11
	touch $@

dbio-client: $(DBIO_VENV)/.installed

# Real search engines for the search tests (tests/infra/opensearch.py starts them): OpenSearch 2.19 and
# Elasticsearch 7.10, each its integration-test distribution from Maven Central (cached in ~/.m2) plus the
# percolator and analysis-common modules, laid out with their descriptors. $(1): the folder with pom.xml
# and modules/, $(2): the installation. Needs Maven and Java 17, installed from Debian's packages if missing.
define fetch-search-engine
	command -v mvn >/dev/null && command -v java >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq maven openjdk-17-jre-headless)
	rm -rf $(2)
	mvn -q -B -f $(1)/pom.xml generate-resources
	for module in $(1)/modules/*/; do \
		cp $$module/plugin-descriptor.properties $(2)/modules/$$(basename $$module)/ || exit 1; done
	touch $(2)/.installed
endef

$(OPENSEARCH)/.installed: tests/opensearch/pom.xml $(wildcard tests/opensearch/modules/*/plugin-descriptor.properties)
	$(call fetch-search-engine,tests/opensearch,$(OPENSEARCH))

$(ELASTICSEARCH7)/.installed: tests/elasticsearch7/pom.xml \
		$(wildcard tests/elasticsearch7/modules/*/plugin-descriptor.properties)
	$(call fetch-search-engine,tests/elasticsearch7,$(ELASTICSEARCH7))

opensearch: $(OPENSEARCH)/.installed
elasticsearch7: $(ELASTICSEARCH7)/.installed

# Node tools the tests call: asl-validator checks every workflow definition (tests/test_workflows_definitions.py).
$(NODE_TOOLS)/.installed:
	npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) asl-validator@4.0.0
	touch $@

# A real browser for tests/test_swagger_ui_browser.py: Debian's Chromium, driven by playwright-core.
$(NODE_TOOLS)/.browser: $(NODE_TOOLS)/.installed
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) playwright-core@1.64.1
	touch $@

browser: $(NODE_TOOLS)/.browser

# The Google Cloud Pub/Sub emulator, for the GCS object-event tests (tests/infra/gcs_events.py; fake-gcs-server
# itself comes with requirements-dev.txt): Debian's google-cloud-cli-pubsub-emulator, a Java program. Its apt
# source is disabled on these machines, so where it is missing this says so and stops.
PUBSUB_EMULATOR_DEB := google-cloud-cli-pubsub-emulator
.PHONY: pubsub-emulator
pubsub-emulator:
	@command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless)
	@dpkg -s $(PUBSUB_EMULATOR_DEB) >/dev/null 2>&1 || command -v cloud-pubsub-emulator >/dev/null || \
		apt-get install -y -qq $(PUBSUB_EMULATOR_DEB) >/dev/null 2>&1 || { \
		echo "make: the Google Cloud Pub/Sub emulator is missing: the GCS event tests need the Debian package" \
			"$(PUBSUB_EMULATOR_DEB) (Google Cloud SDK apt source, disabled on these machines) or" \
			"cloud-pubsub-emulator on the PATH. See README, Tests and benchmarks." >&2; exit 1; }

run: $(VENV)/.installed
	mkdir -p staging
	. ./environment && exec $(BIN)/python dss-api

lint: $(VENV)/.installed
	$(BIN)/ruff check dss chalice daemons scripts tests benchmarks dss-api
	$(BIN)/mypy

test: $(VENV)/.installed $(HCA_VENV)/.installed $(DBIO_VENV)/.installed $(NODE_TOOLS)/.installed \
		$(NODE_TOOLS)/.browser $(OPENSEARCH)/.installed $(ELASTICSEARCH7)/.installed $(CHECKOV_VENV)/.installed \
		$(LAMBDA_LAYER) pubsub-emulator lint
	DSS_HCA_BIN=$(abspath $(HCA_VENV))/bin/hca DSS_DBIO_BIN=$(abspath $(DBIO_VENV))/bin/dbio \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(VENV)/.installed $(NODE_TOOLS)/.installed $(OPENSEARCH)/.installed $(ELASTICSEARCH7)/.installed pubsub-emulator
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed $(OPENSEARCH)/.installed $(ELASTICSEARCH7)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/bench_workflows.py
	$(BIN)/python benchmarks/bench_search.py

bench-quick: $(VENV)/.installed $(OPENSEARCH)/.installed $(ELASTICSEARCH7)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python benchmarks/run.py --quick
	$(BIN)/python benchmarks/bench_workflows.py --quick
	$(BIN)/python benchmarks/bench_search.py --quick

# Schemathesis against the spec a real ./dss-api serves (admin token, fixed seed, 1,000 cases per operation,
# at least 10,000 requests): fails on any server error or contract violation. FUZZ_ARGS adds options.
FUZZ_ARGS ?=
fuzz: $(VENV)/.installed
	$(BIN)/python scripts/fuzz.py $(FUZZ_ARGS)

# Re-pin the lock files from the .in files (run after changing a direct dependency).
lock:
	rm -rf /tmp/dss-lock && $(PYTHON) -m venv /tmp/dss-lock
	/tmp/dss-lock/bin/pip install --quiet -r requirements.txt.in
	/tmp/dss-lock/bin/pip freeze --all --exclude pip --exclude setuptools --exclude wheel > requirements.txt
	/tmp/dss-lock/bin/pip install --quiet -r requirements-dev.txt.in
	/tmp/dss-lock/bin/pip freeze --all --exclude pip --exclude setuptools --exclude wheel > requirements-dev.txt

# checkov, for make package's checks, in its own virtualenv: it pins boto3 exactly, which .venv cannot share.
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade "pip<26.3"
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $@

# The runtime dependencies built for Lambda (manylinux x86_64, CPython 3.11) as one layer: set-up time, with
# network, like the virtualenvs; make package then needs none.
$(LAMBDA_LAYER): requirements.txt | $(VENV)/.installed
	$(BIN)/python scripts/package.py layer

lambda-layer: $(LAMBDA_LAYER)

# Every Lambda artifact of STAGE (default: DSS_DEPLOYMENT_STAGE, else dev) into dist/STAGE, then the offline
# checks: terraform fmt and validate, code <-> infrastructure <-> policy consistency, checkov, parliament,
# ASL, package sizes. No network, no credentials.
package: $(VENV)/.installed $(CHECKOV_VENV)/.installed $(NODE_TOOLS)/.installed $(LAMBDA_LAYER)
	$(BIN)/python scripts/package.py --stage $(STAGE)
	$(BIN)/python scripts/check_package.py --stage $(STAGE)

# With AWS and GCP credentials (scripts/deploy.py; without them each stops at once): plan or apply infra/,
# then `deploy` packages, applies the Lambdas, pushes their environment, checks the secrets and smoke-tests
# the stage. `destroy` only for a test stage.
plan-infra deploy-infra deploy destroy: $(VENV)/.installed $(CHECKOV_VENV)/.installed $(NODE_TOOLS)/.installed \
		$(LAMBDA_LAYER)
	$(BIN)/python scripts/deploy.py $@ --stage $(STAGE)

clean:
	rm -rf $(VENV) $(HCA_VENV) $(DBIO_VENV) $(CHECKOV_VENV) .lambda-layer dist .pytest_cache .mypy_cache .ruff_cache
