# Local stand-in for redis:7-alpine, used only by scripts/compose-test.sh: the Debian base plus Debian's
# redis-server (Redis 7) and redis-tools, run as user redis in /data like the public image. Built with
# `--network host`, as apt-get fetches the packages.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
