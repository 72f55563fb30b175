# The filter as an OCI image Istio can pull (WasmPlugin / TrafficExtension `url: oci://...`), for users who
# build images with Docker. It is the "compat" layout: one layer holding /plugin.wasm.
#   make build
#   docker build -t registry.example.com/idempotency-filter:0.1.0 .
#   docker push registry.example.com/idempotency-filter:0.1.0
# Without a Docker daemon, `make oci` writes the same kind of image as an OCI layout to target/oci/.
FROM scratch
COPY target/wasm32-wasip1/release/idempotency_filter.wasm ./plugin.wasm
