"""One unary call with raw-bytes messages, for the gRPC end-to-end test.

    client.py TARGET METHOD MESSAGE_HEX[,MESSAGE_HEX...] [KEY]

Several messages make a client-streaming call.

Prints one JSON object: the status code name, details, the answer (hex, or null), initial and
trailing metadata (binary values as hex). A KEY is sent as `idempotency-key` metadata.
"""

import json
import sys

import grpc

from outcome import outcome


def main():
    target, method, message_hex = sys.argv[1:4]
    metadata = (("idempotency-key", sys.argv[4]),) if len(sys.argv) > 4 else None
    with grpc.insecure_channel(target) as channel:
        messages = [bytes.fromhex(m) for m in message_hex.split(",")]
        if len(messages) > 1:
            call = channel.stream_unary(
                method, request_serializer=None, response_deserializer=None
            )
            request = iter(messages)
        else:
            call = channel.unary_unary(
                method, request_serializer=None, response_deserializer=None
            )
            request = messages[0]
        ended = outcome(call, request, metadata=metadata, timeout=20)
    print(json.dumps(ended))


if __name__ == "__main__":
    main()
