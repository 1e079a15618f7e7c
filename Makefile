# emunet: one entry point for set-up, the fabric, tests and benchmarks.
# `make up` and `make test` each install what they need first (idempotent).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := tshark iptables conntrack tcpdump iproute2

.PHONY: setup up down test e2e lint typecheck bench ci clean image

setup: $(STAMP)

# the strict editable install links files one by one: re-link when modules are added
$(STAMP): pyproject.toml emunet emunet/packets emunet/dataplane emunet/cluster nodes control
	@scripts/install-system-deps $(APT_PACKAGES)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
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

ci: lint typecheck test e2e

# the Docker image (etcd, node agents, internet process); offline-capable, and a
# no-op when the image was already built from this tree: see scripts/build-image
image: setup
	@scripts/build-image

clean:
	rm -rf $(VENV) build *.egg-info
