"""How a gRPC call ended, in the form the end-to-end tests read (client.py and retrying.py print it).

The status code name, details, the answer (hex, or null), initial and trailing metadata (binary
values as hex).
"""

import grpc


def pairs(metadata):
    return [[k, v.hex() if isinstance(v, bytes) else v] for k, v in (metadata or ())]


def outcome(call, request, **options):
    """Makes `call` with `request` (and `options`: metadata, timeout); returns how it ended."""
    try:
        answer, done = call.with_call(request, **options)
        code, details = done.code(), done.details()
        initial, trailing = done.initial_metadata(), done.trailing_metadata()
    except grpc.RpcError as err:
        answer = None
        code, details = err.code(), err.details()
        initial, trailing = err.initial_metadata(), err.trailing_metadata()
    return {
        "code": code.name,
        "details": details,
        "answer": answer.hex() if answer is not None else None,
        "initial": pairs(initial),
        "trailing": pairs(trailing),
    }
