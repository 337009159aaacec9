# The gateway as a container: non-root, config mounted at /etc/gateway/gateway.toml,
# state (spool, outbox) in the /var/lib/gateway volume.
#
#   docker build -t esp-gateway .
#   docker run -v $PWD/gateway.toml:/etc/gateway/gateway.toml:ro -v gw-data:/var/lib/gateway \
#              -p 587:587 esp-gateway
#
# In the mounted config, bind listeners to 0.0.0.0 (the example binds 127.0.0.1, which is
# unreachable from outside the container) and set data_dir = "/var/lib/gateway".
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

USER gateway
WORKDIR /var/lib/gateway
ENV GATEWAY_CONFIG=/etc/gateway/gateway.toml
VOLUME ["/var/lib/gateway"]
EXPOSE 25 587 465 2525 8025

HEALTHCHECK --interval=30s --timeout=5s CMD ["gateway", "check-config"]
CMD ["gateway", "serve"]
