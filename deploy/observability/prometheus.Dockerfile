# The Prometheus of docker-compose.yaml (service prometheus): scrapes both gateways' /stats/prometheus and the
# key store's /metrics (prometheus.yml here) and evaluates the alerts (alerts.yml here). Build from the
# repository root:
#   docker build -f deploy/observability/prometheus.Dockerfile -t idempotency-demo/prometheus .
# PROMETHEUS_IMAGE is the base; its default is the public image. Any image whose entrypoint is `prometheus`,
# with the default flags `--config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus`
# and `promtool` on the PATH, works: the compose test uses a local one built from Debian's prometheus package.
ARG PROMETHEUS_IMAGE=prom/prometheus:v3.5.0
FROM ${PROMETHEUS_IMAGE}
COPY deploy/observability/prometheus.yml deploy/observability/alerts.yml /etc/prometheus/
