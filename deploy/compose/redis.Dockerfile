# The Redis of docker-compose.yaml (service redis): the key store's backend, with deploy/compose/redis.conf
# (append-only file, fsync every second, no eviction). Build from the repository root:
#   docker build -f deploy/compose/redis.Dockerfile -t idempotency-demo/redis .
# REDIS_IMAGE is the base; its default is the public image. Any Redis 7 image with `redis-server` and
# `redis-cli` on the PATH and /data writable by the user it runs as works: the compose test uses a local one
# built from Debian's redis-server package.
ARG REDIS_IMAGE=redis:7-alpine
FROM ${REDIS_IMAGE}
COPY deploy/compose/redis.conf /usr/local/etc/redis/redis.conf
CMD ["redis-server", "/usr/local/etc/redis/redis.conf"]
