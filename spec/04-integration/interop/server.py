"""The interop server: grpc.testing.TestService as doc/interop-test-descriptions.md
("Server" section) asks, after grpc's own Python interop server.

* Payloads are zero bytes of the requested size (type COMPRESSABLE).
* x-grpc-test-echo-initial is echoed back as initial metadata and
  x-grpc-test-echo-trailing-bin as trailing metadata, on every method.
* response_status (EchoStatus) makes the call end with that code and message
  (for streams: when a request carrying it arrives).
* UnimplementedCall is not implemented (the generated base class answers
  UNIMPLEMENTED); grpc.testing.UnimplementedService is not registered at all.
"""
import threading
from concurrent import futures

import grpc

from . import stubs

INITIAL_METADATA_KEY = "x-grpc-test-echo-initial"
TRAILING_METADATA_KEY = "x-grpc-test-echo-trailing-bin"

_STATUS_BY_VALUE = {sc.value[0]: sc for sc in grpc.StatusCode}
MAX_MESSAGE = 16 * 1024 * 1024


def _payload(size):
    m = stubs().messages_pb2
    return m.Payload(type=m.COMPRESSABLE, body=b"\x00" * size)


def _echo_metadata(context):
    md = dict(context.invocation_metadata())
    if INITIAL_METADATA_KEY in md:
        context.send_initial_metadata([(INITIAL_METADATA_KEY, md[INITIAL_METADATA_KEY])])
    if TRAILING_METADATA_KEY in md:
        context.set_trailing_metadata([(TRAILING_METADATA_KEY, md[TRAILING_METADATA_KEY])])


def _echo_status(request, context):
    """True when the request asks for a status (which is then set on the call)."""
    if request.HasField("response_status"):
        status = request.response_status
        context.set_code(_STATUS_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN))
        context.set_details(status.message)
        return True
    return False


class TestService(stubs().test_pb2_grpc.TestServiceServicer):

    def __init__(self):
        self._pause = threading.Event()  # never set: paces streams (interval_us)

    def EmptyCall(self, request, context):
        _echo_metadata(context)
        return stubs().empty_pb2.Empty()

    def UnaryCall(self, request, context):
        m = stubs().messages_pb2
        _echo_metadata(context)
        if _echo_status(request, context):
            return m.SimpleResponse()
        return m.SimpleResponse(payload=_payload(request.response_size))

    def CacheableUnaryCall(self, request, context):
        return self.UnaryCall(request, context)

    def _respond(self, request, context):
        m = stubs().messages_pb2
        for params in request.response_parameters:
            if params.interval_us:
                self._pause.wait(params.interval_us / 1e6)
            if not context.is_active():
                return
            yield m.StreamingOutputCallResponse(payload=_payload(params.size))

    def StreamingOutputCall(self, request, context):
        _echo_metadata(context)
        if _echo_status(request, context):
            return
        yield from self._respond(request, context)

    def StreamingInputCall(self, request_iterator, context):
        _echo_metadata(context)
        total = sum(len(r.payload.body) for r in request_iterator)
        return stubs().messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    def FullDuplexCall(self, request_iterator, context):
        _echo_metadata(context)
        for request in request_iterator:
            if _echo_status(request, context):
                return
            yield from self._respond(request, context)

    def HalfDuplexCall(self, request_iterator, context):
        _echo_metadata(context)
        requests = list(request_iterator)
        for request in requests:
            if _echo_status(request, context):
                return
            yield from self._respond(request, context)

    # UnimplementedCall: left to the generated base class (UNIMPLEMENTED).


class _Recorder(grpc.ServerInterceptor):
    def __init__(self, server):
        self.server = server

    def intercept_service(self, continuation, details):
        with self.server.lock:
            self.server.calls.append(details.method)
        return continuation(details)


class InteropServer:
    """The interop server on 127.0.0.1:<ephemeral>; .calls records every method
    path it was asked for (unknown ones included)."""

    def __init__(self, workers=32):
        self.lock = threading.Lock()
        self.calls = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  interceptors=[_Recorder(self)],
                                  options=[("grpc.max_send_message_length", MAX_MESSAGE),
                                           ("grpc.max_receive_message_length", MAX_MESSAGE)])
        stubs().test_pb2_grpc.add_TestServiceServicer_to_server(TestService(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        if not self.port:
            raise RuntimeError("the interop server could not bind 127.0.0.1")
        self.server.start()
        self.address = "127.0.0.1:%d" % self.port

    def methods_seen(self):
        with self.lock:
            return list(self.calls)

    def stop(self):
        self.server.stop(0).wait(5)
