"""A unary gRPC service for the gRPC end-to-end test, with raw-bytes messages (identity
(de)serializers, no protobuf code generation).

/test.Echo/Call answers b"answer:" + the request, with initial metadata `x-served` and trailing
metadata `x-trailer` and the binary `x-trailer-bin`. /test.Echo/Fail aborts with
FAILED_PRECONDITION "nope: " + the request and trailing metadata `x-why` (a trailers-only answer). A request that contains b"hold" is held until /test.Echo/Release is called,
so that a test can send a duplicate while the first call is in the service; one that contains
b"slow" takes 1.5 s, one with b"sloth" 3 s (and either finishes whether or not its caller is still there, as grpcio runs a
handler to its end after a cancellation). /test.Echo/Collect
(client streaming) answers its messages joined by b"+". /test.Echo/Count
answers how many Call, Fail, Collect and FirstFails requests ran, as ASCII.
/test.Echo/FirstFails fails the first time it runs for a given request and answers OK
(b"answer:" + the request) afterwards, to show how a service's own status settles a key: the
request is b"<STATUS CODE NAME>:..."; the failure is that code with trailing metadata `x-why`,
trailers-only (`context.abort`) or, when the request contains b"late", after initial metadata
and a message (gRPC clients drop a message that ends in an error status, but it is on the wire). Prints `PORT <n>` once serving, and `STARTED <hex>`
when a Call begins (the test's readiness signals). Listens on 127.0.0.1 only.
"""

import sys
import threading
import time
from concurrent import futures

import grpc

lock = threading.Lock()
calls = 0
release = threading.Event()


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def call(request, context):
    global calls
    with lock:
        calls += 1
    out("STARTED " + request.hex())
    if b"hold" in request:
        release.wait(30)
    if b"sloth" in request:
        time.sleep(3.0)
    elif b"slow" in request:
        time.sleep(1.5)
    context.send_initial_metadata((("x-served", "yes"),))
    context.set_trailing_metadata((("x-trailer", "t1"), ("x-trailer-bin", b"\x00\x01\x02")))
    return b"answer:" + request


def fail(request, context):
    global calls
    with lock:
        calls += 1
    context.set_trailing_metadata((("x-why", "w1"),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope: " + request.decode(errors="replace"))


runs = {}


def first_fails(request, context):
    global calls
    with lock:
        calls += 1
        runs[request] = runs.get(request, 0) + 1
        first = runs[request] == 1
    if not first:
        return b"answer:" + request
    code = grpc.StatusCode[request.split(b":", 1)[0].decode()]
    context.set_trailing_metadata((("x-why", "first"),))
    if b"late" in request:
        context.send_initial_metadata((("x-served", "yes"),))
        context.set_code(code)
        context.set_details("first run")
        return b"partial:" + request
    context.abort(code, "first run")


def collect(requests, context):
    """Client streaming: counts as one call, answers the messages joined by b"+"."""
    global calls
    with lock:
        calls += 1
    return b"+".join(requests)


def count(request, context):
    with lock:
        return str(calls).encode()


def do_release(request, context):
    release.set()
    return b"released"


def unary(fn):
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=None, response_serializer=None
    )


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Call": unary(call),
            "Fail": unary(fail),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "FirstFails": unary(first_fails),
            "Count": unary(count),
            "Release": unary(do_release),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    out("PORT %d" % port)
    # Ends when the test closes stdin (or dies): no server outlives its test.
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
