# The Kamiwaza gateway. docker-compose.yml builds it and runs it against an OPA
# service (KAMIWAZA_OPA_URL), and the Helm chart (deploy/helm/kamiwaza) runs it
# beside an OPA sidecar container, so the image carries no OPA binary. It runs
# as user 10001 (numeric, so that Kubernetes' runAsNonRoot can check it) and
# writes only to /data and /tmp (a read-only root file system works).
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY translator ./translator
COPY gateway ./gateway
COPY observability ./observability
RUN pip install .
COPY policies ./policies
COPY rego ./rego

# /data: keys file and audit spool; /policy: the compiled policy for OPA.
RUN groupadd --system --gid 10001 kamiwaza \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data kamiwaza \
    && mkdir -p /data /policy \
    && chown 10001:10001 /data /policy
USER 10001:10001

ENV KAMIWAZA_HOST=0.0.0.0 \
    KAMIWAZA_PORT=8080 \
    KAMIWAZA_POLICY=/app/policies/routing.yaml \
    KAMIWAZA_REGO_DIR=/app/rego \
    KAMIWAZA_KEYS=/data/keys.json \
    KAMIWAZA_AUDIT_DIR=/data/audit
EXPOSE 8080
CMD ["kamiwaza", "serve"]
