# Every target creates .venv and installs what it needs, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit e2e bench bench-quick lint format clean tools vendor-ui bytecode etcd-protos

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# xds-protos ships an old copy of OpenTelemetry's protos at the very paths of
	# opentelemetry-proto, and whichever pip unpacks last wins. The newer copy is a superset
	# that Envoy's protos load as well, so it goes last (the OTLP ingest needs it).
	$(BIN)/pip install --quiet --no-deps --force-reinstall "$$(grep -o 'opentelemetry-proto==[0-9.]*' pyproject.toml)"
	touch $(STAMP)

# Bytecode for src/: an editable install has none, and where PYTHONDONTWRITEBYTECODE is set
# every agent would compile its modules from source at each start, which leaves ~0.7 MB of
# private memory behind per sidecar (measured); a regular pip install compiles it too.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q src

demo: bytecode
	$(BIN)/tsunagi demo

# Programs the benchmarks and e2e tests drive (prometheus: /usr/bin/prometheus, for
# tests/e2e/test_prometheus.py; valgrind: callgrind counts instructions per request for
# benchmarks/instructions.py; the quick benchmark run is part of `make test`; etcd, from
# etcd-server: the etcd store's tests). Debian's packages, as COMMAND[:PACKAGE]; skipped with
# a note where apt-get is not available.
TOOLS := wrk hey haproxy chromium prometheus valgrind etcd:etcd-server ip:iproute2 iptables
tools:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: missing$$missing (install them to run the data-plane benchmark)"; fi; \
	fi

test: bytecode tools
	$(BIN)/pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/golden

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

bench: bytecode tools
	$(BIN)/python -m benchmarks

bench-quick: bytecode tools
	$(BIN)/python -m benchmarks --quick

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# The dashboard's vendored Cytoscape.js: fetched from the npm registry, checked against the
# sha256 in src/tsunagi/ui/static/vendor/README.md (bump both there to upgrade).
CYTOSCAPE := 3.34.4
VENDOR := src/tsunagi/ui/static/vendor
vendor-ui:
	rm -rf build/vendor-ui && mkdir -p build/vendor-ui
	cd build/vendor-ui && npm pack --silent cytoscape@$(CYTOSCAPE) >/dev/null && tar xzf cytoscape-$(CYTOSCAPE).tgz
	cp build/vendor-ui/package/dist/cytoscape.min.js build/vendor-ui/package/LICENSE build/vendor-ui/
	cd build/vendor-ui && grep -E '^[0-9a-f]{64}  ' $(CURDIR)/$(VENDOR)/README.md | sha256sum --check --strict
	cp build/vendor-ui/cytoscape.min.js build/vendor-ui/LICENSE $(VENDOR)/
	rm -rf build/vendor-ui

# The etcd store's gRPC stubs, from the protos vendored beside them (scripts/etcd_protos.py
# --upstream ETCD_CHECKOUT re-vendors the protos first).
etcd-protos: $(STAMP)
	$(BIN)/python scripts/etcd_protos.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
