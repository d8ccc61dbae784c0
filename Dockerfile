# The Kamiwaza gateway. docker-compose.yml builds it and runs it against an OPA
# service (KAMIWAZA_OPA_URL), so the image carries no OPA binary.
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
RUN useradd --system --uid 10001 --home-dir /data kamiwaza \
    && mkdir -p /data /policy \
    && chown kamiwaza /data /policy
USER kamiwaza

ENV KAMIWAZA_HOST=0.0.0.0 \
    KAMIWAZA_PORT=8080 \
    KAMIWAZA_POLICY=/app/policies/routing.yaml \
    KAMIWAZA_REGO_DIR=/app/rego \
    KAMIWAZA_KEYS=/data/keys.json \
    KAMIWAZA_AUDIT_DIR=/data/audit
EXPOSE 8080
CMD ["kamiwaza", "serve"]
