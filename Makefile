# emunet: one entry point for set-up, the fabric, tests and benchmarks.
# `make up` and `make test` each install what they need first (idempotent).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := tshark iptables conntrack tcpdump iproute2

# the modules setup.py compiles with mypyc: a change to one rebuilds the install
# (about two minutes; `EMUNET_PURE=1 make setup` installs pure Python in seconds)
COMPILED := $(wildcard emunet/*.py emunet/packets/*.py emunet/dataplane/*.py) emunet/cluster/kubeproxy.py

.PHONY: setup up down test test-pure e2e lint typecheck bench ci clean image

setup: $(STAMP)

# the strict editable install links files one by one: re-link when modules are
# added; the compiled core is rebuilt when a compiled module changes
$(STAMP): pyproject.toml setup.py $(COMPILED) emunet emunet/packets emunet/dataplane emunet/cluster nodes control
	@scripts/install-system-deps $(APT_PACKAGES)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "installing emunet$(if $(filter 1,$(EMUNET_PURE)), (pure Python), with its compiled core (mypyc: about two minutes))"
	@# the editable build puts the extensions beside the sources: none may outlive its source
	@find emunet -name '*.so' -delete
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=strict
	@touch $(STAMP)

# the compose fabric where a Docker engine answers (image first), else local mode;
# EMUNET_FABRIC=compose|local chooses. `make down` stops whichever runs.
up: setup
	@BIN=$(BIN) MAKE="$(MAKE)" scripts/fabric-up

down: setup
	$(BIN)/emunet down

test: setup
	$(BIN)/pytest -q

# the unit tests of the compiled modules against their pure-Python sources (a copy
# without the extensions, first on the path), so both builds pass the same tests
test-pure: setup
	@rm -rf build/pure && mkdir -p build/pure
	@tar -cf - --exclude='*.so' --exclude=__pycache__ emunet | tar -xf - -C build/pure
	@# the adapters too, as installed (emunet.nodes, emunet.control): the benchmarks import them
	@tar -cf - --exclude=__pycache__ nodes | tar -xf - -C build/pure/emunet
	@tar -cf - --exclude=__pycache__ control | tar -xf - -C build/pure/emunet
	EMUNET_EXPECT_BUILD=pure PYTHONPATH=$(CURDIR)/build/pure $(BIN)/pytest -q \
	    tests/test_build.py tests/dataplane tests/packets tests/cluster

e2e: setup
	@# pytest exits 5 when no test is selected; that is not a failure
	$(BIN)/pytest -q -m e2e; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

lint: setup
	$(BIN)/ruff check emunet nodes control tests benchmarks
	$(BIN)/ruff format --check emunet nodes control tests benchmarks

typecheck: setup
	$(BIN)/mypy --strict -p emunet -p emunet.nodes -p emunet.control

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

ci: lint typecheck test test-pure e2e

# the Docker image (etcd, node agents, internet process); offline-capable, and a
# no-op when the image was already built from this tree: see scripts/build-image
image: setup
	@scripts/build-image

clean:
	rm -rf $(VENV) build *.egg-info
