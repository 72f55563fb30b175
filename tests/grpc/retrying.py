"""Concurrent unary calls with a gRPC retry policy, for the gRPC end-to-end tests.

    retrying.py SPEC_JSON

SPEC: {"targets": ["127.0.0.1:PORT", ...], "method": "/test.Echo/Call", "message": HEX,
       "key": "...", "threads": N, "timeout": SECONDS, "retry": true|false}

N threads start together (a barrier), thread i calling targets[i % len(targets)] on a channel of
its own. With "retry", the channel has a service config whose retry policy retries UNAVAILABLE
(5 attempts, backoff 0.2-1 s; a server's grpc-retry-pushback-ms overrides the backoff), as a
client would configure for a service behind the filter. Prints a JSON list, one outcome per
thread: code name, details, answer (hex or null), initial and trailing metadata.
"""

import json
import sys
import threading

import grpc

from outcome import outcome

RETRY = {
    "methodConfig": [
        {
            "name": [{"service": "test.Echo"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def one(spec, target, barrier, out, i):
    options = [("grpc.enable_retries", 1 if spec.get("retry") else 0)]
    if spec.get("retry"):
        options.append(("grpc.service_config", json.dumps(RETRY)))
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(
            spec["method"], request_serializer=None, response_deserializer=None
        )
        barrier.wait()
        out[i] = outcome(
            call,
            bytes.fromhex(spec["message"]),
            metadata=(("idempotency-key", spec["key"]),),
            timeout=spec.get("timeout", 20),
        )


def main():
    spec = json.loads(sys.argv[1])
    n = spec.get("threads", 1)
    barrier = threading.Barrier(n)
    out = [None] * n
    threads = [
        threading.Thread(
            target=one,
            args=(spec, spec["targets"][i % len(spec["targets"])], barrier, out, i),
        )
        for i in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
