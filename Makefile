# Two commands do everything on a fresh machine:
#   make run    virtualenv + dependencies + OPA, then serve the example policy
#   make test   the same set-up, then every check and test CI runs
# Both are idempotent and quick once set up.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OPA    := .tools/bin/opa
export KAMIWAZA_OPA_BIN ?= $(CURDIR)/$(OPA)

POLICY    ?= policies/routing.yaml
ENDPOINTS ?= policies/endpoints.yaml
BUILD     := build/policy
OPA_ADDR  ?= 127.0.0.1:8181

.PHONY: setup opa run test compile lint clean

setup: $(STAMP) opa

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The script is a no-op when the pinned OPA is already installed.
opa:
	@./scripts/install-opa.sh >/dev/null

compile: setup
	@$(BIN)/kamiwaza policy compile $(POLICY) --endpoints $(ENDPOINTS) -o $(BUILD)

# Until the gateway service lands, `run` serves the compiled example policy from
# OPA on loopback: query POST http://$(OPA_ADDR)/v1/data/kamiwaza/route/decision
run: compile
	@echo "OPA serving the example policy on http://$(OPA_ADDR) (Ctrl-C to stop)"
	@exec $(OPA) run --server --addr $(OPA_ADDR) --log-level error $(BUILD) rego

test: setup
	@./scripts/test.sh

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
