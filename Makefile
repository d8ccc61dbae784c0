# Two commands do everything on a fresh machine:
#   make run    set up, then the quick start: two demo model endpoints and the
#               gateway on the demo policy, on 127.0.0.1:$(PORT)
#   make test   the same set-up, then every check and test CI runs
# Both are idempotent and quick once set up.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ASSETS := node_modules/.installed-stamp
OPA    := .tools/bin/opa
export KAMIWAZA_OPA_BIN ?= $(CURDIR)/$(OPA)

# The quick start (make run): demo endpoints that answer with canned replies.
DEMO_POLICY    ?= policies/demo/routing.yaml
DEMO_ENDPOINTS ?= policies/demo/endpoints.yaml
DEMO_VPC_PORT  ?= 8101
DEMO_SAAS_PORT ?= 8102
# The production template (make run-example, make compile): real providers.
POLICY    ?= policies/routing.yaml
ENDPOINTS ?= policies/endpoints.yaml
BUILD     := build/policy
KEYS      ?= keys.json
AUDIT_DIR ?= audit
PORT      ?= 8080

.PHONY: setup opa assets tools prometheus helm redis browser test-tools run run-example test compile lint clean

# What `run` needs; `test` adds the test-only tools (their first build is slow).
setup: $(STAMP) opa assets

# pip's output goes to $(VENV)/pip.log, and is shown when it fails.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "==> creating the virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing the Python dependencies into $(VENV) with pip (first time: a minute or two)"
	@{ $(BIN)/python -m pip install --disable-pip-version-check --upgrade pip \
	   && $(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'; } > $(VENV)/pip.log 2>&1 \
	 || { cat $(VENV)/pip.log; echo "make: pip install failed; its output is above (and in $(VENV)/pip.log)" >&2; exit 1; }
	@touch $(STAMP)

# The script is a no-op when the pinned OPA is already installed; it says when it builds.
opa:
	@./scripts/install-opa.sh >/dev/null

# The console's charting library (package.json, package-lock.json) into node_modules/.
assets: $(ASSETS)

$(ASSETS): package.json package-lock.json
	@command -v npm >/dev/null || { echo "make: npm is not installed: install Node.js (with npm), for the console's charts" >&2; exit 1; }
	@echo "==> installing the console's chart library with npm ci (first time: a few seconds)"
	@npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $(ASSETS)

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

# The test-only tools, built side by side: each first build takes minutes. The
# Debian packages (Redis, Chromium) go one after the other: apt holds one lock.
test-tools:
	@./scripts/install-tools.sh >/dev/null & tools=$$!; \
	./scripts/install-prometheus.sh >/dev/null & prom=$$!; \
	./scripts/install-helm.sh >/dev/null & helm=$$!; \
	{ ./scripts/install-redis.sh && ./scripts/install-chromium.sh; } >/dev/null & apt=$$!; \
	status=0; for pid in $$tools $$prom $$helm $$apt; do wait $$pid || status=1; done; \
	exit $$status

# Debian's Chromium and ChromeDriver for the console's browser test; no-op once installed.
browser:
	@./scripts/install-chromium.sh

compile: setup
	@$(BIN)/kamiwaza policy compile $(POLICY) --endpoints $(ENDPOINTS) -o $(BUILD)

# The quick start: the demo endpoints, then the gateway with its OPA sidecar on
# the demo policy. The first run creates a demo API key (printed once) in $(KEYS).
run: setup
	@BIN=$(BIN) KEYS=$(KEYS) PORT=$(PORT) AUDIT_DIR=$(AUDIT_DIR) POLICY=$(DEMO_POLICY) \
		ENDPOINTS=$(DEMO_ENDPOINTS) DEMO_VPC_PORT=$(DEMO_VPC_PORT) DEMO_SAAS_PORT=$(DEMO_SAAS_PORT) \
		./scripts/run-demo.sh

# The production template (policies/routing.yaml) with real providers: endpoints
# whose credentials are not in the environment are allowed here, and fail over.
run-example: setup
	@test -f $(KEYS) || $(BIN)/kamiwaza keys create --keys-file $(KEYS) --tenant demo --user demo --roles analyst,admin
	@exec $(BIN)/kamiwaza serve --policy $(POLICY) --endpoints $(ENDPOINTS) --keys $(KEYS) \
		--audit-dir $(AUDIT_DIR) --port $(PORT) --allow-unconfigured-endpoints

test: setup test-tools
	@./scripts/test.sh

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
