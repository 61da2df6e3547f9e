"""Production gRPC call semantics through nuncio (issue 5), against real grpcio
upstreams:

* a client's cancel reaches the upstream within 100 ms (unary and server
  streaming): the upstream's handler sees its call end;
* an upstream that shuts down gracefully (GOAWAY) while 100 calls are in flight
  on it loses none of them, and calls made meanwhile and afterwards go to the
  server that took over its port;
* metadata passes unchanged both ways: repeated keys, -bin values with NUL and
  0xff, initial and trailing metadata, grpc-status-details-bin and a
  percent-encoded grpc-message on an error status; `te: trailers` reaches the
  upstream (nuncio-h2record shows what went on the wire);
* a request carrying a connection-specific header or a te other than "trailers"
  (RFC 9113 §8.2.2), or an invalid field (§8.2.1), is malformed: a stream error
  (RST_STREAM PROTOCOL_ERROR), nothing reaches the upstream, and the same
  connection serves the next request.

Run by ctest as `/usr/bin/python3 -m unittest -v test_call_semantics` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
NUNCIO_IT_MEASURE=1 prints the measured cancel latencies to stderr.
"""
import base64
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import (BIN, CALL_TIMEOUT, GRPC_MSG_OPTIONS, H2_PROTOCOL_ERROR, SETTLE_TIMEOUT, SLOW,  # noqa: E402
                            H2Client, NuncioTestCase, case, mapping, stubs)

S = stubs()
echo, echo_grpc = S.echo_pb2, S.echo_pb2_grpc

MEASURE = os.environ.get("NUNCIO_IT_MEASURE") == "1"

# A cancel must reach the upstream this fast. The path is: grpcio client sends
# RST_STREAM(CANCEL) -> nuncio resets the upstream stream -> grpcio server runs
# the call's callbacks. Nothing in it waits for a timer, so the bound holds under
# ASan too (measured: well under 10 ms either way); it is not scaled by SLOW.
CANCEL_BOUND = 0.100
CANCEL_ROUNDS = 5
CANCEL_GIVE_UP = 2 * SLOW  # seconds: long past failing, so a broken proxy fails fast


def wait_until(predicate, what, timeout=SETTLE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.005)  # poll interval


# --------------------------------------------------------------------------- the upstream

class Probe:
    """echo.Echo whose behaviour the request text chooses; everything a test
    needs to observe is recorded under the request's tag.

    Echo:   "block"  -> wait until the call ends (the client cancels); ended_at[tag]
                        is time.monotonic() when grpc ran the call's callbacks.
            "hold"   -> count the call in (all_held is set at hold_target calls),
                        wait for release, then echo text and payload back.
            "meta"   -> record the invocation metadata, send initial metadata and
                        trailing metadata (RESPONSE_INITIAL / RESPONSE_TRAILING).
            "fail"   -> trailing metadata with grpc-status-details-bin, then abort
                        with FAIL_CODE / FAIL_MESSAGE (a trailers-only answer);
                        "fail-after-headers" sends initial metadata first.
            else     -> echo text and payload back.
    Expand: "block"  -> one reply, then wait until the call ends (as Echo)."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.arrived = {}        # tag -> Event: the handler runs
        self.ended = {}          # tag -> Event: grpc ran the call's callbacks
        self.ended_at = {}       # tag -> time.monotonic() of that
        self.metadata = {}       # tag -> [(key, value)] in arrival order
        self.served = []         # tags of the calls that returned normally
        self.held = 0
        self.hold_target = None
        self.all_held = threading.Event()
        self.release = threading.Event()

    def event(self, table, tag):
        with self.lock:
            return table.setdefault(tag, threading.Event())

    def _watch_end(self, tag, context):
        ended = self.event(self.ended, tag)

        def on_end():
            with self.lock:
                self.ended_at.setdefault(tag, time.monotonic())
            ended.set()
        self.assert_callback_added(context.add_callback(on_end))
        return ended

    @staticmethod
    def assert_callback_added(added):
        if not added:
            raise RuntimeError("the call ended before its callback could be added")

    def Echo(self, request, context):
        tag = request.tag
        if request.text == "block":
            ended = self._watch_end(tag, context)
            self.event(self.arrived, tag).set()
            ended.wait(CALL_TIMEOUT)
            return echo.EchoReply(text="not cancelled")
        if request.text == "hold":
            with self.lock:
                self.held += 1
                if self.hold_target is not None and self.held >= self.hold_target:
                    self.all_held.set()
            self.release.wait(CALL_TIMEOUT)
        elif request.text == "meta":
            with self.lock:
                self.metadata[tag] = [(m.key, m.value) for m in context.invocation_metadata()]
            context.send_initial_metadata(RESPONSE_INITIAL)
            context.set_trailing_metadata(RESPONSE_TRAILING)
        elif request.text in ("fail", "fail-after-headers"):
            if request.text == "fail-after-headers":
                context.send_initial_metadata(RESPONSE_INITIAL)
            context.set_trailing_metadata(FAIL_TRAILING)
            context.abort(FAIL_CODE, FAIL_MESSAGE)
        with self.lock:
            self.served.append(tag)
        return echo.EchoReply(text=request.text, payload=request.payload)

    def Expand(self, request, context):
        tag = request.tag
        if request.text != "block":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Expand serves 'block' only")
        ended = self._watch_end(tag, context)
        yield echo.EchoReply(text="first", index=0)
        self.event(self.arrived, tag).set()
        ended.wait(CALL_TIMEOUT)

    def Collect(self, request_iterator, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    def Chat(self, request_iterator, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")


class ProbeUpstream:
    """A grpcio server on 127.0.0.1 with Probe. port: bind that port (grpcio sets
    SO_REUSEPORT, so a second server can take over the port of one that stops)."""

    def __init__(self, name, workers=16, port=0):
        self.probe = Probe(name)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=list(GRPC_MSG_OPTIONS))
        echo_grpc.add_EchoServicer_to_server(self.probe, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:%d" % port)
        if not self.port:
            raise RuntimeError("the %s upstream could not bind 127.0.0.1:%d" % (name, port))
        self.server.start()
        self.address = "127.0.0.1:%d" % self.port

    def stop(self):
        self.server.stop(0).wait(5)


class H2Record:
    """nuncio-h2record (tools/h2record.c) on `ports` ports: answers every request
    with what it received in the x-h2record response header."""

    def __init__(self, ports=1):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        self.proc = subprocess.Popen([os.path.join(os.path.dirname(BIN), "nuncio-h2record"), str(ports)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORTS "):
            self.stop()
            raise RuntimeError("nuncio-h2record did not start: %r" % line)
        self.ports = [int(p) for p in line.split()[1:]]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # h2record exits when its stdin closes
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def parse_record(value):
    """x-h2record value -> (port, [(name, value bytes)]) as the recorder got them."""
    if isinstance(value, str):
        value = value.encode("latin-1")
    fields = value.split(b"\t")

    def unescape(b):
        return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), b)
    pairs = [(unescape(fields[i]).decode("latin-1"), unescape(fields[i + 1])) for i in range(1, len(fields) - 1, 2)]
    return int(fields[0]), pairs


def b64_decode(value):
    """A -bin header as it travels (base64, padded or not) -> bytes."""
    value = value.decode("ascii") if isinstance(value, bytes) else value
    return base64.b64decode(value + "=" * (-len(value) % 4))


def values_of(metadata, key):
    return [v for k, v in metadata if k == key]


# --------------------------------------------------------------------------- metadata under test

BIN_A = b"\x00\xff\x00\x01binary\r\n\xfe\xff\x00"
BIN_B = bytes(range(256))
REQUEST_METADATA = [
    ("x-multi", "one"), ("x-multi", "two"), ("x-multi", "three"),
    ("x-ascii", "a value, with commas; spaces = and !#$%&'*+-.^_`|~ too"),
    ("x-data-bin", BIN_A), ("x-data-bin", BIN_B),
]
RESPONSE_INITIAL = [("x-init", "i1"), ("x-init", "i2"), ("x-init-bin", BIN_A)]
RESPONSE_TRAILING = [("x-trail", "t1"), ("x-trail-bin", BIN_B)]


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_bytes(field, payload):
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def rpc_status(code, message, details):
    """A serialized google.rpc.Status {code, message, details: [Any{type_url, value}]},
    built by hand (google.rpc's stubs are not installed)."""
    out = _varint(1 << 3 | 0) + _varint(code) + _pb_bytes(2, message.encode("utf-8"))
    for type_url, value in details:
        out += _pb_bytes(3, _pb_bytes(1, type_url.encode()) + _pb_bytes(2, value))
    return out


FAIL_CODE = grpc.StatusCode.FAILED_PRECONDITION
FAIL_MESSAGE = "naïve ✓ 100% failed: 'quoted' \"and\" more"  # percent-encoded on the wire
STATUS_DETAILS = rpc_status(FAIL_CODE.value[0], FAIL_MESSAGE,
                            [("type.googleapis.com/google.rpc.DebugInfo", b"\x00\xff\x01stack\x00"),
                             ("type.googleapis.com/google.rpc.ErrorInfo", bytes(range(255, -1, -1)))])
FAIL_TRAILING = [("grpc-status-details-bin", STATUS_DETAILS), ("x-why-bin", BIN_A), ("x-why", "precondition")]

CONNECTION_SPECIFIC = ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")


# --------------------------------------------------------------------------- cancel

class CancelTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = ProbeUpstream("cancel")
        cls.addClassCleanup(cls.up.stop)
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address)])

    def setUp(self):
        super().setUp()
        self.channel = self.proxy.channel()
        self.addCleanup(self.channel.close)
        self.stub = echo_grpc.EchoStub(self.channel)
        # Warm up: the upstream connection exists before the first measurement.
        self.assertEqual(self.stub.Echo(echo.EchoRequest(text="warm"), timeout=CALL_TIMEOUT).text, "warm")

    def measure(self, shape, start_call):
        """start_call(tag) starts a call and returns it once the upstream handler
        runs (and, for a stream, the client has the first reply); the call is then
        cancelled, and the latency (the upstream saw the call end - the client
        cancelled) must stay under CANCEL_BOUND, every round."""
        probe = self.up.probe
        latencies = []
        for i in range(CANCEL_ROUNDS):
            tag = "%s-%d" % (shape, i)
            with case("%s cancel %d" % (shape, i)):
                call = start_call(tag)
                self.assertTrue(probe.event(probe.arrived, tag).wait(CALL_TIMEOUT),
                                "the call never reached the upstream")
                self.assertFalse(probe.event(probe.ended, tag).is_set(), "the call ended before the cancel")
                t_cancel = time.monotonic()
                self.assertTrue(call.cancel(), "grpc refused to cancel a call in progress")
                self.assertTrue(probe.event(probe.ended, tag).wait(CANCEL_GIVE_UP),
                                "the upstream did not see the cancel within %ss (measured so far: %s ms)"
                                % (CANCEL_GIVE_UP, ["%.1f" % (x * 1000) for x in latencies]))
                with probe.lock:
                    latency = probe.ended_at[tag] - t_cancel
                latencies.append(latency)
                self.assertEqual(call.code(), grpc.StatusCode.CANCELLED)
                self.assertLess(latency, CANCEL_BOUND, "the cancel reached the upstream after %.1f ms (all: %s ms)"
                                % (latency * 1000, ["%.1f" % (x * 1000) for x in latencies]))
        if MEASURE:
            sys.stderr.write("\n%s cancel -> upstream (ms): %s\n" % (shape, " ".join("%.2f" % (x * 1000)
                                                                                     for x in latencies)))
        self.proxy.wait_stats(live_streams=0)

    def test_unary_cancel_reaches_the_upstream_within_100ms(self):
        def start(tag):
            return self.stub.Echo.future(echo.EchoRequest(text="block", tag=tag), timeout=CALL_TIMEOUT)
        self.measure("unary", start)

    def test_server_stream_cancel_reaches_the_upstream_within_100ms(self):
        def start(tag):
            call = self.stub.Expand(echo.ExpandRequest(text="block", tag=tag), timeout=CALL_TIMEOUT)
            self.assertEqual(next(call).text, "first")
            return call
        self.measure("stream", start)


# --------------------------------------------------------------------------- GOAWAY

class GoawayDrainTest(NuncioTestCase):
    """100 calls in flight on an upstream that shuts down gracefully: grpcio's
    server.stop(grace) sends GOAWAY at once and lets calls already started finish
    within the grace period. A second server took over the port before."""

    CALLS = 100

    @classmethod
    def setUpClass(cls):
        cls.first = ProbeUpstream("first", workers=cls.CALLS + 16)
        cls.addClassCleanup(cls.first.stop)
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.first.address)])

    def wait_log(self, text):
        wait_until(lambda: text in self.proxy_log(), "the proxy to log %r" % text)

    def test_goaway_during_100_calls_loses_none(self):
        first = self.first.probe
        first.hold_target = self.CALLS
        payloads = [os.urandom(32 + i) + ("call %d" % i).encode() for i in range(self.CALLS)]
        with self.proxy.channel() as channel:
            stub = echo_grpc.EchoStub(channel)
            self.assertEqual(stub.Echo(echo.EchoRequest(text="warm", tag="warm"), timeout=CALL_TIMEOUT).text, "warm")
            calls = [stub.Echo.future(echo.EchoRequest(text="hold", tag="held-%d" % i, payload=payloads[i]),
                                      timeout=CALL_TIMEOUT) for i in range(self.CALLS)]
            try:
                self.assertTrue(first.all_held.wait(CALL_TIMEOUT),
                                "only %d of %d calls reached the upstream" % (first.held, self.CALLS))
                self.proxy.wait_stats(live_streams=self.CALLS)

                second = ProbeUpstream("second", port=self.first.port)
                self.addCleanup(second.stop)
                stopped = self.first.server.stop(CALL_TIMEOUT)  # GOAWAY now; a grace period for the 100
                self.wait_log("sent GOAWAY")

                # While the 100 drain, a new call goes to a new connection: the second server.
                reply = stub.Echo(echo.EchoRequest(text="during", tag="during"), timeout=CALL_TIMEOUT)
                self.assertEqual(reply.text, "during")
                self.assertEqual(second.probe.served, ["during"])
                self.assertTrue(all(not c.done() for c in calls), "a held call ended before it was released")
            finally:
                first.release.set()

            for i, call in enumerate(calls):
                with case("held call %d" % i):
                    reply = call.result(CALL_TIMEOUT)
                    self.assertEqual(reply.text, "hold")
                    self.assertEqual(reply.payload, payloads[i])
            self.assertEqual(sorted(first.served), sorted(["warm"] + ["held-%d" % i for i in range(self.CALLS)]))
            self.assertTrue(stopped.wait(CALL_TIMEOUT), "the first server should finish its shutdown")

            # After the drain, new calls keep going to the second server.
            reply = stub.Echo(echo.EchoRequest(text="after", tag="after"), timeout=CALL_TIMEOUT)
            self.assertEqual(reply.text, "after")
            self.assertEqual(second.probe.served, ["during", "after"])
        self.proxy.wait_stats(live_streams=0)


# --------------------------------------------------------------------------- metadata

class MetadataTest(NuncioTestCase):
    """/echo.Echo/ goes to a grpcio upstream; /rec.Probe/ to nuncio-h2record's first
    port (what went on the wire); /bad.Probe/ to its second port, used only by the
    malformed-request test (so upstream_connects tells whether it was contacted)."""

    @classmethod
    def setUpClass(cls):
        cls.up = ProbeUpstream("metadata")
        cls.addClassCleanup(cls.up.stop)
        cls.rec = H2Record(ports=2)
        cls.addClassCleanup(cls.rec.stop)
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address),
                         mapping("rec", "/rec.Probe/", "127.0.0.1:%d" % cls.rec.ports[0]),
                         mapping("bad", "/bad.Probe/", "127.0.0.1:%d" % cls.rec.ports[1])])

    def setUp(self):
        super().setUp()
        self.channel = self.proxy.channel()
        self.addCleanup(self.channel.close)
        self.stub = echo_grpc.EchoStub(self.channel)

    def assert_same_metadata(self, expected, got, what):
        for key in dict(expected):
            self.assertEqual(values_of(got, key), values_of(expected, key), "%s: %s" % (what, key))

    def test_request_metadata_reaches_the_upstream_unchanged(self):
        reply = self.stub.Echo(echo.EchoRequest(text="meta", tag="request-md"), timeout=CALL_TIMEOUT,
                               metadata=REQUEST_METADATA)
        self.assertEqual(reply.text, "meta")
        got = self.up.probe.metadata["request-md"]
        self.assert_same_metadata(REQUEST_METADATA, got, "request metadata at the upstream")

    def test_response_metadata_reaches_the_client_unchanged(self):
        reply, call = self.stub.Echo.with_call(echo.EchoRequest(text="meta", tag="response-md"),
                                               timeout=CALL_TIMEOUT)
        self.assertEqual(reply.text, "meta")
        self.assert_same_metadata(RESPONSE_INITIAL, call.initial_metadata(), "initial metadata")
        self.assert_same_metadata(RESPONSE_TRAILING, call.trailing_metadata(), "trailing metadata")
        self.assertEqual(call.code(), grpc.StatusCode.OK)

    def test_error_status_details_and_message_pass_unchanged(self):
        for shape in ("fail", "fail-after-headers"):
            with case(shape):
                with self.assertRaises(grpc.RpcError) as cm:
                    self.stub.Echo(echo.EchoRequest(text=shape, tag=shape), timeout=CALL_TIMEOUT)
                err = self.assertRpcCode(cm, FAIL_CODE)
                self.assertEqual(err.details(), FAIL_MESSAGE)
                trailing = err.trailing_metadata()
                self.assertEqual(values_of(trailing, "grpc-status-details-bin"), [STATUS_DETAILS])
                self.assert_same_metadata(FAIL_TRAILING, trailing, "error trailers")
                if shape == "fail-after-headers":
                    self.assert_same_metadata(RESPONSE_INITIAL, err.initial_metadata(), "initial metadata")

    def record_of(self, call_metadata):
        values = values_of(call_metadata, "x-h2record")
        self.assertEqual(len(values), 1, "the recorder's answer should carry one x-h2record: %r" % (call_metadata,))
        return parse_record(values[0])

    def test_te_trailers_and_metadata_on_the_upstream_wire(self):
        rec_echo = self.channel.unary_unary("/rec.Probe/Echo", request_serializer=echo.EchoRequest.SerializeToString,
                                            response_deserializer=echo.EchoReply.FromString)
        reply, call = rec_echo.with_call(echo.EchoRequest(text="x"), timeout=CALL_TIMEOUT, metadata=REQUEST_METADATA)
        self.assertEqual(reply.text, "")  # h2record's empty message
        port, wire = self.record_of(call.initial_metadata())
        self.assertEqual(port, self.rec.ports[0])
        self.assertEqual(values_of(wire, "te"), [b"trailers"], "the client's te: trailers should reach the upstream")
        self.assertEqual(values_of(wire, "content-type"), [b"application/grpc"])
        for name in CONNECTION_SPECIFIC:
            self.assertEqual(values_of(wire, name), [], "%s must not be sent on HTTP/2" % name)
        # Repeated keys stay separate fields in their order; -bin values are base64 on the wire.
        self.assertEqual(values_of(wire, "x-multi"), [b"one", b"two", b"three"])
        self.assertEqual(values_of(wire, "x-ascii"), [values_of(REQUEST_METADATA, "x-ascii")[0].encode()])
        self.assertEqual([b64_decode(v) for v in values_of(wire, "x-data-bin")], [BIN_A, BIN_B])

    def nghttp(self, path, headers, body=None):
        """nghttp -v with these headers (and body, sent with -d); returns its output."""
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        args = ["nghttp", "-v"]
        tmp = None
        if body is not None:
            with tempfile.NamedTemporaryFile(delete=False) as f:
                f.write(body)
            tmp = f.name
            args += ["-d", tmp]
        for h in headers:
            args += ["-H", h]
        try:
            return subprocess.run(args + ["http://127.0.0.1:%d%s" % (self.proxy.port, path)], capture_output=True,
                                  timeout=CALL_TIMEOUT, env=env).stdout.decode("latin-1")
        finally:
            if tmp:
                os.unlink(tmp)

    def test_te_trailers_from_nghttp_reaches_the_upstream(self):
        msg = echo.EchoRequest(text="x").SerializeToString()
        for label, headers, body in (
                ("grpc", ["content-type: application/grpc", "te: trailers"], struct.pack(">BI", 0, len(msg)) + msg),
                ("plain GET", ["te: trailers"], None)):
            with case(label):
                out = self.nghttp("/rec.Probe/Echo", headers, body)
                m = re.search(r"recv \(stream_id=\d+\) x-h2record: ([^\n]*)\n", out)
                self.assertIsNotNone(m, "no x-h2record in nghttp's output:\n%s" % out[-3000:])
                _, wire = parse_record(m.group(1))
                self.assertEqual(values_of(wire, "te"), [b"trailers"])
                self.assertRegex(out, r"recv \(stream_id=\d+\) :status: 200")

    def test_connection_specific_headers_are_a_stream_error_and_the_connection_goes_on(self):
        before = self.proxy.stats()["upstream_connects"]
        request = echo.EchoRequest(text="x")
        malformed = [(name, "close" if name == "connection" else "x") for name in CONNECTION_SPECIFIC]
        malformed += [("te", "gzip"), ("te", "trailers, deflate")]  # te may only be "trailers"
        malformed += [("X-Upper", "1"), ("x-nul", "a\x00b")]  # §8.2.1: lowercase names, no NUL in values
        with H2Client(self.proxy.port) as client:
            for name, value in malformed:
                with case("%s: %s" % (name, value)):
                    st = client.wait(client.grpc_request("/bad.Probe/Echo", request, extra=[(name, value)]))
                    # RFC 9113 §8.2.2 + §8.1.1: malformed -> stream error of type PROTOCOL_ERROR
                    # (a response may precede the reset, but it must not be a success).
                    self.assertEqual(st.reset, H2_PROTOCOL_ERROR,
                                     "expected RST_STREAM PROTOCOL_ERROR; got reset=%r headers=%r"
                                     % (st.reset, st.headers))
                    self.assertFalse(st.headers and st.header(":status") == "200", "a malformed request succeeded")
                    self.assertIsNone(client.goaway, "a stream error must not end the connection")
            self.assertEqual(self.proxy.stats()["upstream_connects"], before,
                             "a malformed request must not be forwarded (the upstream was contacted)")
            # The same connection serves the next, well-formed request, to the same upstream.
            st = client.wait(client.grpc_request("/bad.Probe/Echo", request))
            self.assertIsNone(st.reset)
            self.assertEqual(st.header(":status"), "200")
            self.assertEqual(st.header("grpc-status", block=-1), "0")
            port, wire = parse_record(st.header("x-h2record").encode("latin-1"))
            self.assertEqual(port, self.rec.ports[1])
            self.assertIsNone(client.goaway)
        self.assertEqual(self.proxy.stats()["upstream_connects"], before + 1)
        self.proxy.wait_stats(live_streams=0)


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
