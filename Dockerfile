# The gateway as a container: non-root, config at /etc/gateway/gateway.toml (config/docker.toml
# unless you mount your own over it), certificates mounted at /etc/gateway/tls, state (spool,
# outbox) in the /var/lib/gateway volume. See config/docker.toml for what it needs.
#
#   docker build -t esp-gateway .
#   docker run -v /etc/letsencrypt/live/mail.example.com:/etc/gateway/tls:ro \
#              -e GATEWAY_SMTP_PASSWORD_HASH='scrypt$...' -v gw-data:/var/lib/gateway \
#              -p 587:587 -p 465:465 esp-gateway
FROM python:3.11-slim

RUN groupadd --system gateway \
 && useradd --system --gid gateway --home-dir /var/lib/gateway --create-home gateway

WORKDIR /opt/gateway
COPY pyproject.toml README.md requirements.txt ./
COPY gateway ./gateway
COPY plugins ./plugins
# Every dependency from the lock, checked against its hashes; then the gateway without resolving.
RUN pip install --no-cache-dir --require-hashes -r requirements.txt \
 && pip install --no-cache-dir --no-deps --no-build-isolation . \
 && mkdir -p /etc/gateway \
 && cp /opt/gateway/README.md /etc/gateway/README.md
COPY gateway.toml.example /etc/gateway/gateway.toml.example
COPY config/docker.toml /etc/gateway/gateway.toml

USER gateway
WORKDIR /var/lib/gateway
ENV GATEWAY_CONFIG=/etc/gateway/gateway.toml
VOLUME ["/var/lib/gateway"]
EXPOSE 25 587 465 2525 8025

# Asks the running gateway (its /healthz, or an SMTP NOOP when [http] is off): exit 1 when the
# server is down, which check-config (a file check) never noticed.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s CMD ["gateway", "health", "--timeout", "5"]
CMD ["gateway", "serve"]
