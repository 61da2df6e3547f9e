"""HTTP/2 abuse against a running nuncio (issue 9), while a good gRPC client
keeps calling through the same listener.

Each attack runs on its own raw connection (the fixture's H2Client, or a plain
socket for the slow reader) and must end in a GOAWAY (ENHANCE_YOUR_CALM,
0xb) and a close within its budget, counted once in /metrics
(nuncio_http2_abuse_total{kind=...}) and logged once ("HTTP/2 abuse <kind>").
The budgets are csrc/h2_guard.h's:

    rapid_reset    > 100 early client resets in 1 s, > half the streams ended
    continuation   > 8 CONTINUATION frames in one block (60 KiB limit), > 2 empty
    settings       > 100 SETTINGS frames in 1 s
    ping           > 100 PINGs in 1 s not following our DATA
    empty_data     > 100 empty DATA frames (no END_STREAM) in 1 s
    priority       > 1000 PRIORITY frames in 1 s
    window_update  > 1000 WINDOW_UPDATEs in 1 s beyond two per DATA frame we sent
    hpack_bomb     a block decoding to > the 60 KiB limit and > 64 x its wire size
    zero_window    response data stuck behind closed windows for 30 s
    slow_read      output at the 256 KiB high-water mark not turning over for 30 s
                   (no GOAWAY: the client reads nothing; the connection is cut)

The flood budgets trip on the burst itself, so their GOAWAY must come within
FLOOD_BOUND; the stalls are timed by a watchdog that looks every 2 s, so
theirs comes between 30 and 32 s after the stall began (STALL_BOUND allows for
the time to fill the buffers). Meanwhile a grpcio client calls SayHello in a
loop on its own channel: >= 99 % of its calls must succeed. nuncio's VmRSS is
sampled throughout and must stay under RSS_BOUND: 64 MiB (measured: a peak of
about 11 MiB; the bound leaves room for the slow reader's buffered streams,
up to 1 MiB each, and the allocator; under ASan, where shadow memory and the
quarantine of freed chunks count too, 1 GiB).

A second test runs the good client's own normal behaviour (unary calls, many
in flight, large server streams that make grpcio send BDP PINGs and
WINDOW_UPDATEs, client streaming, a few cancels and expired deadlines) for
several thousand calls and requires that no budget trips.

Run by ctest as `/usr/bin/python3 -m unittest -v test_h2_attacks` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
NUNCIO_IT_MEASURE=1 prints the measured times and RSS to stderr.
"""
import os
import re
import socket
import struct
import sys
import threading
import time
from concurrent import futures

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import (CALL_TIMEOUT, GRPC_MSG_OPTIONS, H2_CONTINUATION, H2_DATA, H2_END_HEADERS,  # noqa: E402
                            H2_END_STREAM, H2_GOAWAY, H2_HEADERS, H2_PING, H2_PREFACE, H2_RST_STREAM, H2_SETTINGS,
                            H2_WINDOW_UPDATE, SANITIZE, SLOW, H2Client, NuncioTestCase, grpc_frame, hpack_int,
                            hpack_literal, mapping, stubs)

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc
echo, echo_grpc = S.echo_pb2, S.echo_pb2_grpc

MEASURE = os.environ.get("NUNCIO_IT_MEASURE") == "1"
MiB = 1024 * 1024

H2_PRIORITY_FRAME = 2
ENHANCE_YOUR_CALM = 0xb
KINDS = ("rapid_reset", "continuation", "settings", "ping", "empty_data", "priority", "window_update",
         "hpack_bomb", "zero_window", "slow_read")

FLOOD_BOUND = 2.0 * SLOW       # s: a flood's GOAWAY and close (the budget trips on the burst)
STALL = 30.0                   # s: H2G_STALL
STALL_TICK = 2.0               # s: H2S_WATCH_TICK
STALL_BOUND = STALL + STALL_TICK + 8.0 * SLOW   # s from the attack's start: the stall, a tick, filling buffers
RSS_BOUND = (1024 if SANITIZE else 64) * MiB
GOOD_RATE = 0.99


def log_measure(fmt, *args):
    if MEASURE:
        sys.stderr.write(("[h2 attacks] " + fmt + "\n") % args)


def vm_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(0.05):  # the sampling period, not a synchronization
            try:
                self.peak = max(self.peak, vm_rss(self.pid))
            except OSError:
                return

    def stop(self):
        self.halt.set()
        self.join()


class GoodClient(threading.Thread):
    """SayHello in a loop on its own channel until stopped; counts outcomes."""

    def __init__(self, proxy):
        super().__init__(daemon=True)
        self.channel = proxy.channel()
        self.ok = self.failed = 0
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        stub = hw_grpc.GreeterStub(self.channel)
        i = 0
        while not self.halt.is_set():
            i += 1
            try:
                reply = stub.SayHello(hw.HelloRequest(name="good %d" % i), timeout=CALL_TIMEOUT)
                if reply.message == "Hello, good %d!" % i:
                    self.ok += 1
                else:
                    self.failed += 1
            except grpc.RpcError as e:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append("%s: %s" % (e.code(), e.details()))

    def stop(self):
        self.halt.set()
        self.join()
        self.channel.close()

    @property
    def rate(self):
        total = self.ok + self.failed
        return self.ok / total if total else 0.0


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload


def request_headers(port, path):
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1:%d" % port),
            ("content-type", "application/grpc"), ("te", "trailers")]


def hpack_indexed_literal(name, value):
    """A literal field with incremental indexing and a new name: it enters the dynamic table (index 62)."""
    return (b"\x40" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value)


def connect(port):
    """An H2Client that has seen the proxy's SETTINGS (so a burst after it meets a session that is up)."""
    c = H2Client(port, timeout=CALL_TIMEOUT)
    deadline = time.monotonic() + CALL_TIMEOUT
    while 0x3 not in c.peer_settings:
        c.read_frame(deadline)
    return c


def until_closed(client, t0, timeout):
    """Reads frames until the proxy closes the connection; returns (GOAWAY seconds, close seconds) after t0
    (None when not seen within timeout)."""
    deadline = t0 + timeout
    goaway_at = None
    while True:
        try:
            ftype = client.read_frame(deadline)[0]
        except socket.timeout:
            return goaway_at, None
        except OSError:  # EOF (ConnectionError) or a reset
            return goaway_at, time.monotonic() - t0
        if ftype == H2_GOAWAY and goaway_at is None:
            goaway_at = time.monotonic() - t0


def send_quietly(client, data):
    """The proxy may close while a burst is still being sent: that is the point."""
    try:
        client.sock.sendall(data)
    except OSError:
        pass


class H2AttacksTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address),
                         mapping("echo", "/echo.Echo/", cls.up.address)])

    def abuse_counts(self):
        status, body = self.proxy.admin_get("/metrics")
        self.assertEqual(status, 200)
        out = {}
        for m in re.finditer(r'^nuncio_http2_abuse_total\{kind="([a-z_]+)"\} (\d+)$', body, re.M):
            out[m.group(1)] = int(m.group(2))
        self.assertEqual(sorted(out), sorted(KINDS), "every kind is reported")
        return out

    def wait_count(self, kind, value, timeout):
        deadline = time.monotonic() + timeout
        while True:
            counts = self.abuse_counts()
            if counts[kind] >= value or time.monotonic() >= deadline:
                return counts
            time.sleep(0.05)  # poll interval

    # ------------------------------------------------------------ the attacks

    def rapid_reset(self, port):
        c = connect(port)
        block = hpack_literal(request_headers(port, "/helloworld.Greeter/SayHello"))
        burst = bytearray()
        for i in range(300):
            sid = 1 + 2 * i
            burst += frame(H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, sid, block)
            burst += frame(H2_RST_STREAM, 0, sid, struct.pack(">I", 0x8))
        return c, bytes(burst)

    def continuation(self, port):
        c = connect(port)
        block = hpack_literal(request_headers(port, "/helloworld.Greeter/SayHello"))
        burst = frame(H2_HEADERS, H2_END_STREAM, 1, block)
        for i in range(20):
            burst += frame(H2_CONTINUATION, 0, 1, hpack_literal([("x-pad-%d" % i, "p" * 100)]))
        return c, burst

    def empty_continuation(self, port):
        c = connect(port)
        block = hpack_literal(request_headers(port, "/helloworld.Greeter/SayHello"))
        burst = frame(H2_HEADERS, H2_END_STREAM, 1, block) + frame(H2_CONTINUATION, 0, 1) * 10
        return c, burst

    def settings(self, port):
        return connect(port), frame(H2_SETTINGS, 0, 0) * 200

    def ping(self, port):
        return connect(port), b"".join(frame(H2_PING, 0, 0, struct.pack(">Q", i)) for i in range(200))

    def empty_data(self, port):
        c = connect(port)
        block = hpack_literal(request_headers(port, "/echo.Echo/Collect"))
        return c, frame(H2_HEADERS, H2_END_HEADERS, 1, block) + frame(H2_DATA, 0, 1) * 200

    def priority(self, port):
        c = connect(port)
        return c, b"".join(frame(H2_PRIORITY_FRAME, 0, 3 + 2 * i, struct.pack(">IB", 0, 15)) for i in range(1100))

    def window_update(self, port):
        return connect(port), frame(H2_WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)) * 1300

    def hpack_bomb(self, port):
        c = connect(port)
        # One 4 KiB entry into the dynamic table, then 12 000 one-byte references
        # to it (0xbe: indexed field 62): 16 KiB on the wire, 48 MB decoded.
        block = (hpack_literal(request_headers(port, "/helloworld.Greeter/SayHello"))
                 + hpack_indexed_literal(b"x-bomb", b"b" * 4000) + b"\xbe" * 12000)
        return c, frame(H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, 1, block)

    def run_flood(self, kind, make):
        port = self.proxy.port
        before_log = self.proxy.log_size()
        before = self.abuse_counts()[kind]
        c, burst = make(port)
        try:
            t0 = time.monotonic()
            send_quietly(c, burst)
            goaway_at, closed_at = until_closed(c, t0, FLOOD_BOUND + 5)
        finally:
            c.close()
        log_measure("%-14s GOAWAY %s after %s s, closed after %s s", make.__name__, c.goaway,
                    "%.3f" % goaway_at if goaway_at is not None else "-",
                    "%.3f" % closed_at if closed_at is not None else "-")
        self.assertIsNotNone(goaway_at, "%s: no GOAWAY" % make.__name__)
        self.assertEqual(c.goaway[1], ENHANCE_YOUR_CALM, "%s: GOAWAY %r" % (make.__name__, c.goaway))
        self.assertIsNotNone(closed_at, "%s: the connection stayed open" % make.__name__)
        self.assertLessEqual(closed_at, FLOOD_BOUND, "%s: closed too late" % make.__name__)
        counts = self.wait_count(kind, before + 1, 2)
        self.assertEqual(counts[kind], before + 1, "%s: /metrics counted %s" % (make.__name__, kind))
        lines = re.findall(r"HTTP/2 abuse %s " % kind, self.proxy.log(before_log))
        self.assertEqual(len(lines), 1, "%s: log lines for %s" % (make.__name__, kind))
        return goaway_at

    def start_zero_window(self, port):
        """A stream whose window the client keeps at 0 (SETTINGS_INITIAL_WINDOW_SIZE 0) while replies wait."""
        c = H2Client(port, window=0, timeout=CALL_TIMEOUT)
        st = c.grpc_request("/echo.Echo/Expand", echo.ExpandRequest(text="z" * 1000, count=100))
        return c, st

    def start_slow_read(self, port):
        """A client that asks for a lot and reads nothing: a tiny receive buffer, the widest windows."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        out = bytearray(H2_PREFACE)
        out += frame(H2_SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0x7fffffff) + struct.pack(">HI", 0x2, 0))
        out += frame(H2_WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7fffffff - 65535))
        body = grpc_frame(echo.ExpandRequest(text="s" * 8000, count=800))  # one DATA frame: under 16 KiB
        for i in range(4):
            sid = 1 + 2 * i
            out += frame(H2_HEADERS, H2_END_HEADERS, sid, hpack_literal(request_headers(port, "/echo.Echo/Expand")))
            out += frame(H2_DATA, H2_END_STREAM, sid, body)
        s.sendall(bytes(out))
        return s

    def test_attacks_end_in_goaway_while_a_good_client_keeps_calling(self):
        port = self.proxy.port
        rss = RssSampler(self.proxy.proc.pid)
        rss.start()
        good = GoodClient(self.proxy)
        good.start()
        start_counts = self.abuse_counts()
        mark = self.proxy.log_size()
        sr = None
        try:
            # The two stalls take 30 s: they run behind the floods.
            t_stall = time.monotonic()
            zw, zw_stream = self.start_zero_window(port)
            sr = self.start_slow_read(port)
            results = {}
            for kind, make in (("rapid_reset", self.rapid_reset), ("continuation", self.continuation),
                               ("continuation", self.empty_continuation), ("settings", self.settings),
                               ("ping", self.ping), ("empty_data", self.empty_data), ("priority", self.priority),
                               ("window_update", self.window_update), ("hpack_bomb", self.hpack_bomb)):
                results[make.__name__] = self.run_flood(kind, make)
            # zero window: a GOAWAY once the stall has lasted STALL
            try:
                goaway_at, closed_at = until_closed(zw, t_stall, STALL_BOUND)
            finally:
                zw.close()
            log_measure("zero_window    GOAWAY %s after %s s, closed after %s s (stream data %d bytes)", zw.goaway,
                        goaway_at, closed_at, zw_stream.data_bytes)
            self.assertEqual(zw_stream.data_bytes, 0, "DATA went past a zero window")
            self.assertIsNotNone(goaway_at, "zero window: no GOAWAY within %.0f s" % STALL_BOUND)
            self.assertEqual(zw.goaway[1], ENHANCE_YOUR_CALM)
            self.assertGreaterEqual(goaway_at, STALL - 0.5, "zero window: answered before the stall lasted 30 s")
            self.assertIsNotNone(closed_at)
            # slow read: counted and cut, without a GOAWAY it would not read anyway
            counts = self.wait_count("slow_read", start_counts["slow_read"] + 1,
                                     max(1.0, STALL_BOUND - (time.monotonic() - t_stall)))
            cut_at = time.monotonic() - t_stall
            log_measure("slow_read      counted after %.3f s", cut_at)
            self.assertEqual(counts["slow_read"], start_counts["slow_read"] + 1, "slow read not answered in time")
            self.assertGreaterEqual(cut_at, STALL - 0.5)
            sr.settimeout(CALL_TIMEOUT)
            try:
                while sr.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass  # closed with our unread bytes in its buffer: a reset is a close too
        finally:
            if sr is not None:
                sr.close()
            good.stop()
            rss.stop()
        log_measure("good client: %d ok, %d failed (%.4f); peak RSS %.1f MiB", good.ok, good.failed, good.rate,
                    rss.peak / MiB)
        self.assertGreaterEqual(good.rate, GOOD_RATE, "good client: %d ok, %d failed: %s"
                                % (good.ok, good.failed, good.errors))
        self.assertGreater(good.ok, 100)
        self.assertLess(rss.peak, RSS_BOUND, "nuncio's RSS peaked at %.1f MiB" % (rss.peak / MiB))
        counts = self.abuse_counts()
        expected = dict(start_counts)
        for kind in KINDS:
            expected[kind] += 2 if kind == "continuation" else 1
        self.assertEqual(counts, expected)
        text = self.proxy.log(mark)
        for line in re.findall(r".*HTTP/2 abuse .*", text):
            log_measure("%s", line)
        for kind in KINDS:
            self.assertEqual(len(re.findall(r"HTTP/2 abuse %s " % kind, text)), expected[kind] - start_counts[kind],
                             "log lines for %s" % kind)
        self.proxy.wait_stats(live_streams=0)

    def test_a_busy_grpc_client_stays_within_every_budget(self):
        before = self.abuse_counts()
        mark = self.proxy.log_size()
        with self.proxy.channel(options=GRPC_MSG_OPTIONS) as channel:
            greeter = hw_grpc.GreeterStub(channel)
            stub = echo_grpc.EchoStub(channel)
            calls = 0
            # sequential unary calls
            for i in range(1500):
                self.assertEqual(greeter.SayHello(hw.HelloRequest(name="n%d" % i), timeout=CALL_TIMEOUT).message,
                                 "Hello, n%d!" % i)
                calls += 1
            # many in flight at once
            with futures.ThreadPoolExecutor(max_workers=64) as pool:
                done = list(pool.map(lambda i: greeter.SayHello(hw.HelloRequest(name="p%d" % i),
                                                                timeout=CALL_TIMEOUT).message, range(2000)))
            self.assertEqual(done, ["Hello, p%d!" % i for i in range(2000)])
            calls += 2000
            # large server streams: grpcio sends BDP PINGs and WINDOW_UPDATEs as the data comes
            for _ in range(3):
                n = sum(len(r.text) for r in stub.Expand(echo.ExpandRequest(text="d" * 65536, count=300),
                                                         timeout=CALL_TIMEOUT * 3))
                self.assertGreater(n, 300 * 65536)
                calls += 1
            # client streaming with many small messages
            reply = stub.Collect(iter([echo.EchoRequest(text="c")] * 2000), timeout=CALL_TIMEOUT)
            self.assertEqual(reply.index, 2000)
            calls += 1
            # a few cancels and expired deadlines: legitimate client resets
            for i in range(30):
                it = stub.Expand(echo.ExpandRequest(text="x", count=0, interval_ms=10), timeout=CALL_TIMEOUT)
                next(it)
                it.cancel()
                with self.assertRaises(grpc.RpcError):
                    list(stub.Expand(echo.ExpandRequest(text="y", count=0, interval_ms=10), timeout=0.05))
                calls += 2
        log_measure("busy client: %d calls, no budget tripped", calls)
        self.assertGreaterEqual(calls, 3500)
        self.assertEqual(self.abuse_counts(), before)
        self.assertNotIn("HTTP/2 abuse", self.proxy.log(mark))
        self.proxy.wait_stats(live_streams=0)
