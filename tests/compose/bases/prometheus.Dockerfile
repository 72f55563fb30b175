# Local stand-in for prom/prometheus, used only by scripts/compose-test.sh: the Debian base plus Debian's
# prometheus package (prometheus and promtool), with the public image's entrypoint, default flags, storage
# folder and user. Built with `--network host`, as apt-get fetches the packages.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
