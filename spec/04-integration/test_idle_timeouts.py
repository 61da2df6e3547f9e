"""Connection-level timeouts (issue 5), with real sockets:

* Module listener_idle_timeout_ms (Envoy's connection manager idle_timeout): a
  downstream HTTP/2 connection without a stream for that long gets GOAWAY
  (NO_ERROR) and is closed; the timer only runs while no stream is open.
* cluster_idle_timeout_ms (Mapping, else Module): a pooled upstream connection
  without a stream for that long is closed; the next call dials a new one.
* request_headers_timeout_ms (native config; nuncio's own default 10 s, Envoy
  has none): a client that does not finish the preface + SETTINGS, or a request's
  header block, in time is cut off (GOAWAY, close); other clients carry on.

The raw clients here speak just enough HTTP/2 by hand (frames, a literal HPACK
block) to stall exactly where a test wants; grpcio is the well-behaved client.

Run by ctest as `/usr/bin/python3 -m unittest -v test_idle_timeouts` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import socket
import ssl
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from certs import certs  # noqa: E402
from nuncio_fixture import (CALL_TIMEOUT, SETTLE_TIMEOUT, SLOW, NuncioTestCase, host, mapping, secret,  # noqa: E402
                            stubs)

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc
echo, echo_grpc = S.echo_pb2, S.echo_pb2_grpc

IDLE = 0.3        # every timeout these tests configure, in seconds
EARLY = 0.2       # nothing may be cut sooner than this after its timer started (libev rounds a little)
LATE = IDLE + 2 * SLOW   # ... and everything must be cut by this

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, GOAWAY, CONTINUATION = 0x0, 0x1, 0x4, 0x7, 0x9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
NO_ERROR = 0


def module(config):
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "Module",
            "metadata": {"name": "ambassador"}, "spec": {"config": config}}


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload


def hpack(headers):
    """Literal fields without indexing, no Huffman: short names and values only."""
    out = bytearray()
    for name, value in headers:
        name, value = name.encode(), value.encode()
        assert len(name) < 127 and len(value) < 127
        out += bytes([0, len(name)]) + name + bytes([len(value)]) + value
    return bytes(out)


def grpc_request_block(port, path):
    return hpack([(":method", "POST"), (":scheme", "http"), (":path", path),
                  (":authority", "127.0.0.1:%d" % port), ("content-type", "application/grpc"), ("te", "trailers")])


def grpc_body(message):
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


CLIENT_START = PREFACE + frame(SETTINGS, 0, 0)


class RawH2:
    """A TCP client that writes whatever bytes a test gives it and reads the
    proxy's frames: SETTINGS are acknowledged once the client's own preface and
    SETTINGS are out (an ACK in the middle of a preface would be garbage),
    GOAWAY is recorded, and the time each stream ends (END_STREAM) and the
    connection closes (EOF) is noted."""

    def __init__(self, port, data=b"", sock=None):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.started = time.monotonic()
        self.buf = bytearray()
        self.goaway = None       # (last stream id, error code)
        self.goaway_at = None
        self.ended = {}          # stream id -> time its END_STREAM arrived
        self.closed_at = None    # time of EOF / reset
        self.head = b""          # the first bytes sent, to know whether the preface is out
        self.acked = False       # the proxy's SETTINGS were acknowledged
        self.in_block = False    # a header block is open: no ACK may go out now
        if data:
            self.send(data)

    def send(self, data):
        """False when the proxy already closed the connection."""
        if len(self.head) < len(CLIENT_START):
            self.head += data[:len(CLIENT_START) - len(self.head)]
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self):
        self.sock.close()

    def _frames(self):
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                return
            ftype, flags = self.buf[3], self.buf[4]
            sid = struct.unpack(">I", self.buf[5:9])[0] & 0x7fffffff
            payload = bytes(self.buf[9:9 + length])
            del self.buf[:9 + length]
            if ftype == SETTINGS and not flags & ACK and self.head == CLIENT_START and not self.in_block:
                self.acked = self.send(frame(SETTINGS, ACK, 0))
            elif ftype == GOAWAY:
                last, code = struct.unpack(">II", payload[:8])
                self.goaway, self.goaway_at = (last & 0x7fffffff, code), time.monotonic()
            elif ftype in (HEADERS, DATA) and flags & END_STREAM:
                self.ended[sid] = time.monotonic()

    def pump(self, until, stop=None):
        """Reads until EOF (returns True), stop() holds (True) or time `until` (False)."""
        while self.closed_at is None:
            if stop is not None and stop():
                return True
            left = until - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(min(left, 0.05))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:  # reset: closed too
                chunk = b""
            if not chunk:
                self.closed_at = time.monotonic()
                return True
            self.buf += chunk
            self._frames()
        return True

    def start_block(self, data):
        """Settles the connection (the proxy's SETTINGS acknowledged), then sends data,
        which opens a header block, and restarts the clock."""
        self.pump(time.monotonic() + CALL_TIMEOUT, stop=lambda: self.acked)
        if not self.acked:
            raise AssertionError("the proxy's SETTINGS never came (closed at %r)" % (self.closed_at,))
        self.in_block = True
        self.started = time.monotonic()
        self.send(data)

    def wait_closed(self, until):
        """The time of EOF, or None if the connection is still open at `until`."""
        self.pump(until)
        return self.closed_at


class IdleCase(NuncioTestCase):
    """Shared helpers: counters from /stats."""

    def downstream_conns(self, st=None):
        st = st or self.proxy.stats()
        return st["live_conns"] - st["live_upstream_conns"]


# --------------------------------------------------------------------------- downstream idle

class DownstreamIdleTest(IdleCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address),
                         mapping("echo", "/echo.Echo/", cls.up.address)],
                        docs=[module({"listener_idle_timeout_ms": int(IDLE * 1000)})])

    def test_idle_connection_gets_goaway_then_close(self):
        c = RawH2(self.proxy.port, CLIENT_START)
        try:
            closed = c.wait_closed(c.started + LATE)
            self.assertIsNotNone(closed, "an idle connection was still open %.1f s after it started" % LATE)
            self.assertEqual(c.goaway, (0, NO_ERROR), "expected GOAWAY(last stream 0, NO_ERROR) before the close")
            self.assertGreaterEqual(closed - c.started, EARLY, "closed before the idle timeout")
        finally:
            c.close()
        self.assertIn("(idle timeout): GOAWAY, closing", self.proxy_log())

    def test_timer_waits_while_a_stream_is_open_and_restarts_when_it_ends(self):
        # Echo.Expand with 3 replies 200 ms apart: a stream open for ~600 ms, twice the idle timeout.
        port = self.proxy.port
        c = RawH2(port, CLIENT_START + frame(HEADERS, END_HEADERS, 1, grpc_request_block(port, "/echo.Echo/Expand"))
                  + frame(DATA, END_STREAM, 1, grpc_body(echo.ExpandRequest(text="t", count=3, interval_ms=200))))
        try:
            closed = c.wait_closed(c.started + 0.6 + LATE + CALL_TIMEOUT)
            self.assertIn(1, c.ended, "the stream never ended normally (goaway=%r)" % (c.goaway,))
            ended = c.ended[1]
            self.assertGreaterEqual(ended - c.started, 0.5, "the stream was meant to outlast the idle timeout")
            self.assertIsNotNone(closed, "still open %.1f s after its only stream ended" % LATE)
            self.assertEqual(c.goaway, (1, NO_ERROR))
            self.assertGreaterEqual(c.goaway_at, ended, "GOAWAY came while the stream was open")
            self.assertGreaterEqual(closed - ended, EARLY, "the idle timer did not restart from full at the stream's end")
            self.assertLessEqual(closed - ended, LATE)
        finally:
            c.close()

    def test_grpcio_channel_reconnects_after_the_idle_close(self):
        with self.proxy.channel() as channel:
            greeter = hw_grpc.GreeterStub(channel)
            self.assertEqual(greeter.SayHello(hw.HelloRequest(name="a"), timeout=CALL_TIMEOUT).message, "Hello, a!")
            # A call longer than the idle timeout is not cut.
            replies = list(echo_grpc.EchoStub(channel).Expand(echo.ExpandRequest(text="slow", count=3, interval_ms=200),
                                                               timeout=CALL_TIMEOUT))
            self.assertEqual([r.index for r in replies], [0, 1, 2])
            done = time.monotonic()
            self.proxy.wait_stats_until(lambda st: self.downstream_conns(st) == 0,
                                        "the idle grpcio connection closed", timeout=LATE)
            self.assertGreaterEqual(time.monotonic() - done, EARLY)
            # grpcio took the GOAWAY as "reconnect on the next call".
            self.assertEqual(greeter.SayHello(hw.HelloRequest(name="b"), timeout=CALL_TIMEOUT).message, "Hello, b!")


# --------------------------------------------------------------------------- upstream idle

class UpstreamIdleTest(IdleCase):
    """echo -> its own upstream with Mapping cluster_idle_timeout_ms 300; greeter ->
    another upstream under the Module's cluster_idle_timeout_ms 0 (never closed)."""

    @classmethod
    def setUpClass(cls):
        cls.idle_up = cls.start_upstream()
        cls.kept_up = cls.start_upstream()
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.idle_up.address, cluster_idle_timeout_ms=int(IDLE * 1000)),
                         mapping("greeter", "/helloworld.Greeter/", cls.kept_up.address)],
                        docs=[module({"cluster_idle_timeout_ms": 0})])

    def test_idle_upstream_connection_closes_and_the_next_call_dials_again(self):
        with self.proxy.channel() as channel:
            greeter, echoes = hw_grpc.GreeterStub(channel), echo_grpc.EchoStub(channel)
            self.assertEqual(greeter.SayHello(hw.HelloRequest(name="kept"), timeout=CALL_TIMEOUT).message,
                             "Hello, kept!")
            # A 600 ms stream on the idle-timed cluster: its connection stays while it runs.
            replies = list(echoes.Expand(echo.ExpandRequest(text="slow", count=3, interval_ms=200),
                                         timeout=CALL_TIMEOUT))
            self.assertEqual([r.index for r in replies], [0, 1, 2])
            done = time.monotonic()
            connects = self.proxy.stats()["upstream_connects"]
            st = self.proxy.wait_stats(live_upstream_conns=1, timeout=LATE)
            self.assertGreaterEqual(time.monotonic() - done, EARLY, "the upstream connection closed too early")
            self.assertEqual(st["upstream_connects"], connects)
            self.assertIn("(idle timeout): closing", self.proxy_log())

            # The next call opens a new connection, and works.
            self.assertEqual(echoes.Echo(echo.EchoRequest(text="again"), timeout=CALL_TIMEOUT).text, "again")
            st = self.proxy.stats()
            self.assertEqual(st["upstream_connects"], connects + 1)
            self.assertEqual(st["live_upstream_conns"], 2)

            # The other cluster kept its connection all along (Module: 0, never), idle far longer than 300 ms.
            self.assertEqual(greeter.SayHello(hw.HelloRequest(name="still"), timeout=CALL_TIMEOUT).message,
                             "Hello, still!")
            self.assertEqual(self.proxy.stats()["upstream_connects"], connects + 1)
            self.assertEqual(len(self.kept_up.peers), 1, "the greeter's upstream saw a second connection")


# --------------------------------------------------------------------------- request headers timeout

class RequestHeadersTimeoutTest(IdleCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address),
                         mapping("echo", "/echo.Echo/", cls.up.address)],
                        native={"request_headers_timeout_ms": int(IDLE * 1000)})

    def assert_cut(self, c, goaway, what):
        closed = c.wait_closed(c.started + LATE)
        self.assertIsNotNone(closed, "%s: still open %.1f s later" % (what, LATE))
        self.assertGreaterEqual(closed - c.started, EARLY, "%s: cut before the timeout" % what)
        self.assertEqual(c.goaway, goaway, "%s: GOAWAY" % what)

    def test_half_a_preface_is_cut(self):
        c = RawH2(self.proxy.port, PREFACE[:12])
        try:
            self.assert_cut(c, (0, NO_ERROR), "half a preface")
        finally:
            c.close()
        self.assertIn("no HTTP/2 preface and SETTINGS within 0.3 s", self.proxy_log())

    def test_preface_without_settings_is_cut(self):
        c = RawH2(self.proxy.port, PREFACE)
        try:
            self.assert_cut(c, (0, NO_ERROR), "a preface without SETTINGS")
        finally:
            c.close()

    def test_a_client_that_sends_nothing_is_cut(self):
        c = RawH2(self.proxy.port)
        try:
            self.assert_cut(c, None, "a silent client")
        finally:
            c.close()
        self.assertIn("sent nothing within 0.3 s: closed", self.proxy_log())

    def test_unfinished_header_block_gets_goaway_and_close(self):
        block = grpc_request_block(self.proxy.port, "/helloworld.Greeter/SayHello")
        c = RawH2(self.proxy.port, CLIENT_START)
        try:
            c.start_block(frame(HEADERS, 0, 1, block[:10]))  # no END_HEADERS, ever
            self.assert_cut(c, (0, NO_ERROR), "an open header block")
        finally:
            c.close()
        log = self.proxy_log()
        self.assertEqual(log.count("request headers not complete within 0.3 s"), 1, "logged once")
        self.assertIn(" s1] 127.0.0.1:", log)

    def test_trickled_continuation_is_cut_from_the_start_of_the_block(self):
        block = grpc_request_block(self.proxy.port, "/helloworld.Greeter/SayHello")
        # Stream 1 is a complete request, answered; stream 3 trickles.
        c = RawH2(self.proxy.port, CLIENT_START + frame(HEADERS, END_HEADERS, 1, block)
                  + frame(DATA, END_STREAM, 1, grpc_body(hw.HelloRequest(name="first"))))
        try:
            c.pump(time.monotonic() + CALL_TIMEOUT, stop=lambda: 1 in c.ended)
            self.assertIn(1, c.ended, "the first request was not answered")
            c.start_block(frame(HEADERS, 0, 3, block[:4]))
            # One CONTINUATION byte every 100 ms keeps bytes flowing, but never ends the block.
            rest, deadline = block[4:], c.started + LATE
            while rest and not c.pump(time.monotonic() + 0.1):
                if time.monotonic() >= deadline or not c.send(frame(CONTINUATION, 0, 3, rest[:1])):
                    break
                rest = rest[1:]
            self.assertTrue(rest, "the whole block went out before the proxy cut it (make it longer)")
            # Stream 3 was never processed: the client may retry it elsewhere.
            self.assert_cut(c, (1, NO_ERROR), "a trickled header block")
        finally:
            c.close()

    def test_slow_but_complete_headers_and_idle_gaps_are_fine(self):
        port = self.proxy.port
        served = len(self.up.calls_to("/helloworld.Greeter/SayHello"))
        c = RawH2(port, CLIENT_START)
        try:
            # Between requests no header timer runs: idle longer than the timeout.
            self.assertIsNone(c.wait_closed(time.monotonic() + 2 * IDLE), "cut while no header block was open")
            # A header block in two halves, 100 ms apart, finishes in time and is served.
            for sid in (1, 3):
                block = grpc_request_block(port, "/helloworld.Greeter/SayHello")
                c.start_block(frame(HEADERS, 0, sid, block[:5]))
                self.assertIsNone(c.wait_closed(time.monotonic() + IDLE / 3))
                c.in_block = False
                c.send(frame(CONTINUATION, END_HEADERS, sid, block[5:])
                       + frame(DATA, END_STREAM, sid, grpc_body(hw.HelloRequest(name="slow"))))
                c.pump(time.monotonic() + CALL_TIMEOUT, stop=lambda: sid in c.ended)
                self.assertIn(sid, c.ended, "stream %d was not answered (goaway=%r)" % (sid, c.goaway))
                # Each block has its own timer: the second starts well after the first one's would have fired.
                self.assertIsNone(c.wait_closed(time.monotonic() + IDLE / 2))
            self.assertIsNone(c.goaway)
        finally:
            c.close()
        self.assertEqual(len(self.up.calls_to("/helloworld.Greeter/SayHello")), served + 2)

    def test_other_clients_are_not_affected(self):
        port = self.proxy.port
        block = grpc_request_block(port, "/helloworld.Greeter/SayHello")
        with self.proxy.channel() as channel:
            greeter = hw_grpc.GreeterStub(channel)
            self.assertEqual(greeter.SayHello(hw.HelloRequest(name="before"), timeout=CALL_TIMEOUT).message,
                             "Hello, before!")
            stalled = [RawH2(port, PREFACE[:5]), RawH2(port, CLIENT_START), RawH2(port)]
            stalled[1].start_block(frame(HEADERS, 0, 1, block[:3]))
            results = {}

            def slow_stream():
                # Runs across the stalled clients' whole life, on the grpcio channel's connection.
                try:
                    replies = echo_grpc.EchoStub(channel).Expand(
                        echo.ExpandRequest(text="t", count=4, interval_ms=200), timeout=CALL_TIMEOUT)
                    results["indexes"] = [r.index for r in replies]
                except Exception as e:  # noqa: B902 - reported by the assertion below
                    results["error"] = repr(e)

            t = threading.Thread(target=slow_stream)
            t.start()
            try:
                calls = 0
                while any(s.closed_at is None for s in stalled):
                    self.assertEqual(greeter.SayHello(hw.HelloRequest(name="n%d" % calls), timeout=CALL_TIMEOUT)
                                     .message, "Hello, n%d!" % calls)
                    calls += 1
                    for s in stalled:
                        s.pump(time.monotonic() + 0.01)
                    self.assertLess(time.monotonic(), stalled[0].started + LATE + SETTLE_TIMEOUT,
                                    "the stalled clients were never cut")
                self.assertGreater(calls, 0)
            finally:
                t.join(CALL_TIMEOUT)
                for s in stalled:
                    s.close()
            self.assertEqual(results, {"indexes": [0, 1, 2, 3]})
            self.assertEqual(greeter.SayHello(hw.HelloRequest(name="after"), timeout=CALL_TIMEOUT).message,
                             "Hello, after!")


class RequestHeadersTimeoutTlsTest(IdleCase):
    """Over TLS the preface is due request_headers_timeout_ms after the handshake;
    the handshake itself keeps its own 10 s."""

    @classmethod
    def setUpClass(cls):
        cls.certs = certs()
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address)],
                        docs=[secret("server-cert", cls.certs.server.cert_pem, cls.certs.server.key_pem),
                              host("tls-host", "*", tls_secret="server-cert", insecure="Route")],
                        default_host=False, listener_protocol="HTTPS",
                        native={"request_headers_timeout_ms": int(IDLE * 1000)})

    def tls_socket(self):
        ctx = ssl.create_default_context(cadata=self.certs.ca.cert_pem.decode())
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=CALL_TIMEOUT)
        return ctx.wrap_socket(raw, server_hostname="localhost")

    def test_the_preface_is_due_after_the_handshake(self):
        tls = self.tls_socket()
        self.assertEqual(tls.selected_alpn_protocol(), "h2")
        c = RawH2(self.proxy.port, sock=tls)  # its clock starts now, after the handshake
        try:
            c.send(PREFACE[:10])
            closed = c.wait_closed(c.started + LATE)
            self.assertIsNotNone(closed, "a TLS client stalled in its preface was still connected")
            self.assertGreaterEqual(closed - c.started, EARLY)
            self.assertEqual(c.goaway, (0, NO_ERROR))
        finally:
            c.close()

    def test_a_slow_handshake_keeps_the_handshake_deadline(self):
        # The first byte came in time, so the shorter request-header deadline no longer applies.
        partial_client_hello = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32)
        c = RawH2(self.proxy.port, partial_client_hello)
        try:
            self.assertIsNone(c.wait_closed(c.started + 3 * IDLE), "a handshake in progress was cut at the "
                              "request-header timeout, not the handshake's 10 s")
        finally:
            c.close()
        with self.proxy.tls_channel(self.certs.ca.cert_pem, name="localhost") as channel:
            self.assertEqual(hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name="tls"), timeout=CALL_TIMEOUT)
                             .message, "Hello, tls!")
