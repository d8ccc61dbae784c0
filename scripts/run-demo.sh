#!/usr/bin/env bash
# `make run`: the quick start. Starts the two demo model endpoints (canned
# replies, not models) on loopback, then the gateway on the demo policy in
# their place: the demo servers watch their parent, so they stop with the
# gateway (and with make: Ctrl-C stops all three).
#
# Settings come from the environment (the Makefile sets them): BIN, KEYS,
# PORT, AUDIT_DIR, POLICY, ENDPOINTS, DEMO_VPC_PORT, DEMO_SAAS_PORT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN="${BIN:-.venv/bin}"
KEYS="${KEYS:-keys.json}"
PORT="${PORT:-8080}"
AUDIT_DIR="${AUDIT_DIR:-audit}"
POLICY="${POLICY:-policies/demo/routing.yaml}"
ENDPOINTS="${ENDPOINTS:-policies/demo/endpoints.yaml}"
DEMO_VPC_PORT="${DEMO_VPC_PORT:-8101}"
DEMO_SAAS_PORT="${DEMO_SAAS_PORT:-8102}"
KEY_ARGS=(--keys-file "$KEYS" --tenant demo --user demo --roles analyst,admin)

if [ ! -f "$KEYS" ]; then
    echo "==> creating the demo API key in $KEYS (it is printed once: copy the api_key line)"
    "$BIN/kamiwaza" keys create "${KEY_ARGS[@]}"
else
    echo "==> the demo API key is in $KEYS (printed once, when it was created). Lost it? A new one:"
    echo "      $BIN/kamiwaza keys create ${KEY_ARGS[*]}"
    echo "    (and retire the old: $BIN/kamiwaza keys list, then $BIN/kamiwaza keys revoke KEY_ID)"
fi

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

for spec in "demo-in-vpc:$DEMO_VPC_PORT" "demo-saas:$DEMO_SAAS_PORT"; do
    name="${spec%%:*}" port="${spec##*:}"
    if port_open "$port"; then
        echo "error: port $port (demo endpoint $name) is taken; free it or set DEMO_VPC_PORT / DEMO_SAAS_PORT" >&2
        echo "       (and the base_url of $name in $ENDPOINTS)" >&2
        exit 1
    fi
    "$BIN/kamiwaza" demo-upstream --name "$name" --port "$port" --exit-with-parent &
done
for port in "$DEMO_VPC_PORT" "$DEMO_SAAS_PORT"; do
    for _ in $(seq 100); do
        port_open "$port" && break
        sleep 0.1  # the demo servers start in well under a second
    done
    port_open "$port" || { echo "error: the demo endpoint on port $port did not start" >&2; exit 1; }
done

cat <<MSG
==> demo endpoints demo-in-vpc (:$DEMO_VPC_PORT) and demo-saas (:$DEMO_SAAS_PORT) are up: canned replies, not models
==> the gateway on http://127.0.0.1:$PORT with the demo policy ($POLICY); try, with the key above:
      curl -s -i http://127.0.0.1:$PORT/v1/chat/completions -H "Authorization: Bearer \$KEY" \\
        -H "X-Data-Class: pii-restricted" -H "Content-Type: application/json" \\
        -d '{"model": "demo-model", "messages": [{"role": "user", "content": "Hello"}]}'
    the console: http://127.0.0.1:$PORT/console (sign in with the same key)
    Ctrl-C stops the gateway and the demo endpoints.
MSG
exec "$BIN/kamiwaza" serve --policy "$POLICY" --endpoints "$ENDPOINTS" --keys "$KEYS" \
    --audit-dir "$AUDIT_DIR" --port "$PORT"
