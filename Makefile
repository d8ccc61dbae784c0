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
KEYS      ?= keys.json
AUDIT_DIR ?= audit
PORT      ?= 8080

.PHONY: setup opa tools prometheus helm redis test-tools run test compile lint clean

# What `run` needs; `test` adds the test-only tools (their first build is slow).
setup: $(STAMP) opa

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The script is a no-op when the pinned OPA is already installed.
opa:
	@./scripts/install-opa.sh >/dev/null

# Test tools (fake-gcs-server, for the audit GCS sink tests); no-op once built.
tools:
	@./scripts/install-tools.sh >/dev/null

# Prometheus (OTLP receiver) for the metrics integration test; no-op once built.
prometheus:
	@./scripts/install-prometheus.sh >/dev/null

# Helm, for the chart tests (helm lint, helm template); no-op once built.
helm:
	@./scripts/install-helm.sh >/dev/null

# Debian's redis-server for the limiter's integration tests; no-op once installed.
redis:
	@./scripts/install-redis.sh >/dev/null

# The test-only tools, built side by side: each first build takes minutes.
test-tools:
	@./scripts/install-tools.sh >/dev/null & tools=$$!; \
	./scripts/install-prometheus.sh >/dev/null & prom=$$!; \
	./scripts/install-helm.sh >/dev/null & helm=$$!; \
	./scripts/install-redis.sh >/dev/null & redis=$$!; \
	status=0; for pid in $$tools $$prom $$helm $$redis; do wait $$pid || status=1; done; exit $$status

compile: setup
	@$(BIN)/kamiwaza policy compile $(POLICY) --endpoints $(ENDPOINTS) -o $(BUILD)

# The gateway on the example policy, with its OPA sidecar, on 127.0.0.1:$(PORT).
# The first run creates a demo API key (printed once) in $(KEYS). Endpoints
# whose credentials are not in the environment are allowed here, and fail over.
run: setup
	@test -f $(KEYS) || $(BIN)/kamiwaza keys create --keys-file $(KEYS) --tenant demo --user demo --roles analyst
	@exec $(BIN)/kamiwaza serve --policy $(POLICY) --endpoints $(ENDPOINTS) --keys $(KEYS) \
		--audit-dir $(AUDIT_DIR) --port $(PORT) --allow-unconfigured-endpoints

test: setup test-tools
	@./scripts/test.sh

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
