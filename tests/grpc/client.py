"""One unary call with raw-bytes messages, for the gRPC end-to-end test.

    client.py TARGET METHOD MESSAGE_HEX[,MESSAGE_HEX...] [KEY]

Several messages make a client-streaming call.

Prints one JSON object: the status code name, details, the answer (hex, or null), initial and
trailing metadata (binary values as hex). A KEY is sent as `idempotency-key` metadata.
"""

import json
import sys

import grpc


def pairs(metadata):
    return [
        [k, v.hex() if isinstance(v, bytes) else v] for k, v in (metadata or ())
    ]


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
        try:
            answer, outcome = call.with_call(request, metadata=metadata, timeout=20)
            code, details = outcome.code(), outcome.details()
            initial, trailing = outcome.initial_metadata(), outcome.trailing_metadata()
        except grpc.RpcError as err:
            answer = None
            code, details = err.code(), err.details()
            initial, trailing = err.initial_metadata(), err.trailing_metadata()
    print(
        json.dumps(
            {
                "code": code.name,
                "details": details,
                "answer": answer.hex() if answer is not None else None,
                "initial": pairs(initial),
                "trailing": pairs(trailing),
            }
        )
    )


if __name__ == "__main__":
    main()
