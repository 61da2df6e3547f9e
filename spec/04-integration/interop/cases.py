"""The interop client cases of doc/interop-test-descriptions.md, each a function
case(channel, tc): it runs the case over channel and asserts with the
unittest.TestCase tc. CASES keeps them in the document's order."""
import collections
import queue

import grpc

from . import stubs
from .server import INITIAL_METADATA_KEY, TRAILING_METADATA_KEY

CALL_TIMEOUT = 20  # seconds; every case's calls but timeout_on_sleeping_server

_END = object()


class Pipe:
    """A request iterator fed one message at a time (grpc's interop _Pipe)."""

    def __init__(self):
        self._q = queue.Queue()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if item is _END:
            raise StopIteration()
        return item

    def add(self, message):
        self._q.put(message)

    def close(self):
        self._q.put(_END)


def _m():
    return stubs().messages_pb2


def _pipe(tc):
    pipe = Pipe()
    tc.addCleanup(pipe.close)  # the request thread never outlives the test
    return pipe


def _check_payload(tc, payload, size, what):
    tc.assertEqual(payload.type, _m().COMPRESSABLE, "%s: payload type" % what)
    tc.assertEqual(len(payload.body), size, "%s: payload size" % what)
    tc.assertEqual(payload.body, b"\x00" * size, "%s: the payload is not %d zero bytes" % (what, size))


def _test_stub(channel):
    return stubs().test_pb2_grpc.TestServiceStub(channel)


def _large_request():
    m = _m()
    return m.SimpleRequest(response_type=m.COMPRESSABLE, response_size=314159,
                           payload=m.Payload(body=b"\x00" * 271828))


def _streaming_request(size, payload_size, **extra):
    m = _m()
    return m.StreamingOutputCallRequest(response_type=m.COMPRESSABLE,
                                        response_parameters=[m.ResponseParameters(size=size)],
                                        payload=m.Payload(body=b"\x00" * payload_size), **extra)


def _assert_status(tc, err, code, message):
    tc.assertIsInstance(err, grpc.Call)
    tc.assertEqual(err.code(), code, "status code (details %r)" % (err.details(),))
    tc.assertEqual(err.details(), message, "status message")


# --------------------------------------------------------------------------- cases

def empty_unary(channel, tc):
    response, call = _test_stub(channel).EmptyCall.with_call(stubs().empty_pb2.Empty(), timeout=CALL_TIMEOUT)
    tc.assertIsInstance(response, stubs().empty_pb2.Empty)
    tc.assertEqual(response.ByteSize(), 0, "the response should be an empty message")
    tc.assertEqual(call.code(), grpc.StatusCode.OK)


def large_unary(channel, tc):
    response, call = _test_stub(channel).UnaryCall.with_call(_large_request(), timeout=CALL_TIMEOUT)
    _check_payload(tc, response.payload, 314159, "response")
    tc.assertEqual(call.code(), grpc.StatusCode.OK)


def client_streaming(channel, tc):
    m = _m()
    requests = [m.StreamingInputCallRequest(payload=m.Payload(body=b"\x00" * size))
                for size in (27182, 8, 1828, 45904)]
    response, call = _test_stub(channel).StreamingInputCall.with_call(iter(requests), timeout=CALL_TIMEOUT)
    tc.assertEqual(response.aggregated_payload_size, 74922)
    tc.assertEqual(call.code(), grpc.StatusCode.OK)


def server_streaming(channel, tc):
    m = _m()
    sizes = (31415, 9, 2653, 58979)
    request = m.StreamingOutputCallRequest(response_type=m.COMPRESSABLE,
                                           response_parameters=[m.ResponseParameters(size=s) for s in sizes])
    call = _test_stub(channel).StreamingOutputCall(request, timeout=CALL_TIMEOUT)
    responses = list(call)
    tc.assertEqual([len(r.payload.body) for r in responses], list(sizes))
    for i, (r, size) in enumerate(zip(responses, sizes)):
        _check_payload(tc, r.payload, size, "response %d" % i)
    tc.assertEqual(call.code(), grpc.StatusCode.OK)


def ping_pong(channel, tc):
    pipe = _pipe(tc)
    call = _test_stub(channel).FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
    for i, (size, payload_size) in enumerate(((31415, 27182), (9, 8), (2653, 1828), (58979, 45904))):
        pipe.add(_streaming_request(size, payload_size))
        _check_payload(tc, next(call).payload, size, "response %d" % i)
    pipe.close()
    tc.assertEqual(list(call), [], "no more responses after the client half-closed")
    tc.assertEqual(call.code(), grpc.StatusCode.OK)


def empty_stream(channel, tc):
    call = _test_stub(channel).FullDuplexCall(iter([]), timeout=CALL_TIMEOUT)
    tc.assertEqual(list(call), [], "an empty stream gets no responses")
    tc.assertEqual(call.code(), grpc.StatusCode.OK)


INITIAL_VALUE = "test_initial_metadata_value"
TRAILING_VALUE = b"\xab\xab\xab"


def custom_metadata(channel, tc):
    metadata = [(INITIAL_METADATA_KEY, INITIAL_VALUE), (TRAILING_METADATA_KEY, TRAILING_VALUE)]
    stub = _test_stub(channel)

    def check(call, what):
        initial = [v for k, v in call.initial_metadata() if k == INITIAL_METADATA_KEY]
        trailing = [v for k, v in call.trailing_metadata() if k == TRAILING_METADATA_KEY]
        tc.assertEqual(initial, [INITIAL_VALUE], "%s: initial metadata %r" % (what, call.initial_metadata()))
        tc.assertEqual(trailing, [TRAILING_VALUE], "%s: trailing metadata %r" % (what, call.trailing_metadata()))

    # UnaryCall
    response, call = stub.UnaryCall.with_call(_large_request(), metadata=metadata, timeout=CALL_TIMEOUT)
    _check_payload(tc, response.payload, 314159, "UnaryCall response")
    tc.assertEqual(call.code(), grpc.StatusCode.OK)
    check(call, "UnaryCall")

    # FullDuplexCall
    pipe = _pipe(tc)
    call = stub.FullDuplexCall(pipe, metadata=metadata, timeout=CALL_TIMEOUT)
    pipe.add(_streaming_request(314159, 271828))
    pipe.close()
    responses = list(call)
    tc.assertEqual(len(responses), 1, "FullDuplexCall responses")
    _check_payload(tc, responses[0].payload, 314159, "FullDuplexCall response")
    tc.assertEqual(call.code(), grpc.StatusCode.OK)
    check(call, "FullDuplexCall")


def _status_case(channel, tc, code, message, full_duplex=True):
    m = _m()
    stub = _test_stub(channel)
    status = m.EchoStatus(code=code.value[0], message=message)

    # UnaryCall
    try:
        stub.UnaryCall(m.SimpleRequest(response_status=status), timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        _assert_status(tc, e, code, message)
    else:
        tc.fail("UnaryCall: expected status %s, the call succeeded" % code)

    # FullDuplexCall
    if full_duplex:
        call = stub.FullDuplexCall(iter([m.StreamingOutputCallRequest(response_status=status)]),
                                   timeout=CALL_TIMEOUT)
        try:
            responses = list(call)
        except grpc.RpcError as e:
            _assert_status(tc, e, code, message)
        else:
            tc.fail("FullDuplexCall: expected status %s, the call succeeded with %d responses"
                    % (code, len(responses)))


def status_code_and_message(channel, tc):
    _status_case(channel, tc, grpc.StatusCode.UNKNOWN, "test status message")


SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


def special_status_message(channel, tc):
    _status_case(channel, tc, grpc.StatusCode.UNKNOWN, SPECIAL_MESSAGE, full_duplex=False)


def unimplemented_method(channel, tc):
    try:
        _test_stub(channel).UnimplementedCall(stubs().empty_pb2.Empty(), timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        tc.assertEqual(e.code(), grpc.StatusCode.UNIMPLEMENTED, "details %r" % (e.details(),))
    else:
        tc.fail("UnimplementedCall succeeded")


def unimplemented_service(channel, tc):
    stub = stubs().test_pb2_grpc.UnimplementedServiceStub(channel)
    try:
        stub.UnimplementedCall(stubs().empty_pb2.Empty(), timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        tc.assertEqual(e.code(), grpc.StatusCode.UNIMPLEMENTED, "details %r" % (e.details(),))
    else:
        tc.fail("UnimplementedService/UnimplementedCall succeeded")


def cancel_after_begin(channel, tc):
    pipe = _pipe(tc)
    future = _test_stub(channel).StreamingInputCall.future(pipe, timeout=CALL_TIMEOUT)
    tc.assertTrue(future.cancel(), "cancel() of a call just begun should succeed")
    tc.assertTrue(future.cancelled())
    tc.assertEqual(future.code(), grpc.StatusCode.CANCELLED)


def cancel_after_first_response(channel, tc):
    pipe = _pipe(tc)
    call = _test_stub(channel).FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
    pipe.add(_streaming_request(31415, 27182))
    _check_payload(tc, next(call).payload, 31415, "first response")
    tc.assertTrue(call.cancel(), "cancel() after the first response should succeed")
    try:
        next(call)
    except grpc.RpcError as e:
        tc.assertEqual(e.code(), grpc.StatusCode.CANCELLED, "details %r" % (e.details(),))
    else:
        tc.fail("a response arrived after the call was cancelled")


def timeout_on_sleeping_server(channel, tc):
    m = _m()
    pipe = _pipe(tc)
    call = _test_stub(channel).FullDuplexCall(pipe, timeout=0.001)
    pipe.add(m.StreamingOutputCallRequest(payload=m.Payload(body=b"\x00" * 27182)))
    try:
        next(call)
    except grpc.RpcError as e:
        tc.assertEqual(e.code(), grpc.StatusCode.DEADLINE_EXCEEDED, "details %r" % (e.details(),))
    except StopIteration:
        tc.fail("the call ended OK although its 1 ms deadline had to expire")
    else:
        tc.fail("a response arrived although the 1 ms deadline had to expire")


CASES = collections.OrderedDict((f.__name__, f) for f in (
    empty_unary, large_unary, client_streaming, server_streaming, ping_pong, empty_stream, custom_metadata,
    status_code_and_message, special_status_message, unimplemented_method, unimplemented_service,
    cancel_after_begin, cancel_after_first_response, timeout_on_sleeping_server))
