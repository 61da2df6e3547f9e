"""nuncio's own HTTP/2 conformance cases (RFC 9113, with RFC 7541 for HPACK),
organised section by section the way the public h2spec suite is ("3.5/2" is
h2spec's http2/3.5/2), runnable against any cleartext (h2c, prior knowledge)
HTTP/2 server on host:port that proxies gRPC.

    from h2conformance import CASES, Target, FixtureUpstream, run_case
    target = Target("127.0.0.1", port, upstream=FixtureUpstream(up))
    for case in CASES:
        result = run_case(case, target)   # result.verdict: PASS / CONN_FOR_STREAM / FAIL

The client is raw: frames built byte by byte over a plain socket, header blocks
as HPACK literals (nuncio_fixture.hpack_literal: every name and value goes on the
wire exactly as given, even forbidden ones); the server's header blocks are
decoded with libnghttp2's HPACK decoder (nuncio_fixture._HpackDecoder, ctypes).
python3-h2 is not needed.

What the server must route (the target's one gRPC route, to an upstream serving
the test services of spec/helpers/nuncio_fixture.py):
  * /helloworld.Greeter/SayHello  the valid request ("probe") that must get
                                  :status 200 and grpc-status 0;
  * /echo.Echo/Expand             server streaming: with count 0 it streams until
                                  cancelled (a stream held half-closed (remote)),
                                  and the malformed requests go there, carrying
                                  their tag in the message too (see below).

Outcomes, asserted exactly:
  * connection error (CONN): a GOAWAY with that error code, then the server
    closes the connection (RFC 9113 §5.4.1: closing is a MUST, the GOAWAY before
    it a SHOULD; the suite requires both);
  * stream error (STREAM): a RST_STREAM with that code on that stream, and the
    connection goes on: a valid gRPC request on a new stream then gets 200 and
    grpc-status 0. A server that answers a stream error with a connection error
    of the same code gets the verdict CONN_FOR_STREAM: RFC 9113 §5.4.1 permits
    that ("an endpoint MAY choose to treat a stream error as a connection
    error") and h2spec passes it; the test accepts it only for the cases it
    lists as known (test_h2_conformance.CONN_FOR_STREAM_KNOWN), and
    bench/h2spec_compare counts it apart from PASS;
  * EITHER: the RFC lets the endpoint choose stream or connection error;
  * a malformed request (RFC 9113 §8.1.1) must also never be answered as a
    success, and must never reach the upstream: every request a case sends
    carries `x-case: <tag>`; the upstream recorder (Target.upstream) must have
    seen no call with the malformed request's tag. For malformations only
    visible in the body (content-length), a streaming proxy may have forwarded
    the headers already: there the upstream's handler must never have received
    the request (Echo.Expand registers its tag when it runs).
    A response before the RST_STREAM is allowed (RFC 9113 §8.1.1: "a server MAY
    send an HTTP response prior to closing or resetting the stream"), a 2xx is
    not; a 400 without the RST_STREAM fails.

Every case names its level: MUST (RFC 9113 requires exactly this outcome),
SHOULD, MAY (the RFC leaves it to the implementation: h2spec and this suite
still expect the error), and each note says where the project asks more than
the RFC (stream errors must stay stream errors).
"""
import os
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from nuncio_fixture import SLOW, _HpackDecoder, hpack_int, grpc_frame, hpack_literal  # noqa: E402

# ---------------------------------------------------------------------------- protocol constants

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
               SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
               WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, \
    REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY, \
    HTTP_1_1_REQUIRED = range(14)
ERROR_NAMES = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
               "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"]

S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, \
    S_MAX_HEADER_LIST_SIZE = range(1, 7)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

UNARY_PATH = "/helloworld.Greeter/SayHello"
STREAM_PATH = "/echo.Echo/Expand"

# How long a server gets to react to a case (an error, an answer); a case that
# sees nothing in this time fails. Generous under ASan.
TIMEOUT = 3.0 * SLOW
# How long a valid request gets to complete (it goes through the upstream).
PROBE_TIMEOUT = 10.0 * SLOW

PASS, CONN_FOR_STREAM, FAIL = "pass", "conn-for-stream", "FAIL"

MUST, SHOULD, MAY = "MUST", "SHOULD", "MAY"


def err_name(code):
    return ERROR_NAMES[code] if code is not None and 0 <= code < len(ERROR_NAMES) else "0x%x" % (code or 0)


def codes_text(codes):
    return " or ".join(err_name(c) for c in codes)


# ---------------------------------------------------------------------------- protobuf by hand

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_string(field, value):
    value = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _pb_int(field, value):
    return _varint(field << 3) + _varint(value) if value else b""


def hello_body(name="conformance"):
    """A gRPC-framed helloworld.HelloRequest{name}."""
    return grpc_frame(_pb_string(1, name))


def expand_body(tag, count=1, interval_ms=0, text="conformance"):
    """A gRPC-framed echo.ExpandRequest{text, count, interval_ms, tag}: the upstream's
    handler registers the tag when it runs (FixtureUpstream.handled)."""
    return grpc_frame(_pb_string(1, text) + _pb_int(2, count) + _pb_int(3, interval_ms) + _pb_string(4, tag))


# ---------------------------------------------------------------------------- target

class FixtureUpstream:
    """What a case may ask of the upstream, on nuncio_fixture.Upstream: the calls it
    started with `x-case: tag` (grpc interceptor, at the call's headers), and
    whether Echo.Expand's handler ran for a request carrying that tag."""

    def __init__(self, upstream):
        self.up = upstream

    def started(self, tag):
        with self.up.lock:
            return sum(1 for _, md in self.up.calls if md.get("x-case") == tag)

    def handled(self, tag):
        with self.up.lock:
            return tag in self.up.ended


class Target:
    """A server under test: host, port, the :authority to send, and (optionally)
    an upstream recorder with started(tag) / handled(tag) (FixtureUpstream)."""

    def __init__(self, host, port, authority=None, upstream=None, name="server"):
        self.host, self.port = host, port
        self.authority = authority or "%s:%d" % (host, port)
        self.upstream = upstream
        self.name = name


# ---------------------------------------------------------------------------- the raw client

class CaseFailed(AssertionError):
    pass


class _Timeout(Exception):
    pass


class _Stream:
    def __init__(self, sid):
        self.id = sid
        self.blocks = []       # decoded header blocks, each a list of (name, value bytes)
        self.data = bytearray()
        self.data_frames = []  # DATA payload lengths, in order (padding excluded)
        self.ended = False
        self.reset = None      # first RST_STREAM code

    def header(self, name, block=0):
        try:
            fields = self.blocks[block]
        except IndexError:
            return None
        for n, v in fields:
            if n == name:
                return v.decode("latin-1")
        return None

    @property
    def status(self):
        return self.header(":status")

    def describe(self):
        parts = []
        if self.blocks:
            parts.append(":status %s" % self.status)
        if self.data_frames:
            parts.append("%d DATA bytes" % sum(self.data_frames))
        if len(self.blocks) > 1:
            parts.append("grpc-status %s" % self.header("grpc-status", -1))
        if self.reset is not None:
            parts.append("RST_STREAM %s" % err_name(self.reset))
        elif self.ended:
            parts.append("END_STREAM")
        return "stream %d: %s" % (self.id, ", ".join(parts) or "nothing")


class Conn:
    """One client connection. handshake(): preface + our SETTINGS, then until the
    server's SETTINGS (answered with an ACK) and its ACK of ours. read(): one frame,
    with the bookkeeping every case needs (SETTINGS and PING answered, DATA credited
    back unless auto_credit is off, GOAWAY / RST_STREAM / header blocks recorded)."""

    def __init__(self, target, tag):
        self.target = target
        self.tag = tag
        self.sock = socket.create_connection((target.host, target.port), timeout=PROBE_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = _HpackDecoder()
        self.rbuf = bytearray()
        self.streams = {}
        self.next_sid = 1
        self.server_settings = {}
        self.first_frame = None
        self.settings_acked = 0
        self.ping_acks = []
        self.goaway = None            # (last stream id, code)
        self.peer_closed = False      # EOF or reset from the server
        self.send_failed = None       # the error of a send after the server closed
        self.auto_credit = True
        self.hblock = None            # (sid, flags, bytearray) while CONTINUATIONs are expected
        self.log = []                 # notable frames, for the failure text
        self.hpack_error = None

    def close(self):
        try:
            self.sock.close()
        finally:
            self.decoder.close()

    # -- sending

    @staticmethod
    def frame(ftype, flags, sid, payload=b"", length=None):
        n = len(payload) if length is None else length
        return struct.pack(">I", n)[1:] + struct.pack(">BBI", ftype, flags, sid) + payload

    def send_raw(self, data):
        if self.send_failed is not None:
            return
        try:
            self.sock.sendall(data)
        except OSError as e:  # the server closed first: what it said is still to be read
            self.send_failed = e

    def send(self, ftype, flags, sid, payload=b""):
        self.send_raw(self.frame(ftype, flags, sid, payload))

    def handshake(self, settings=()):
        payload = b"".join(struct.pack(">HI", k, v) for k, v in settings)
        self.send_raw(PREFACE + self.frame(SETTINGS, 0, 0, payload))
        deadline = time.monotonic() + TIMEOUT
        try:
            while not (self.server_settings_seen and self.settings_acked):
                self.read(deadline)
        except _Timeout:
            raise CaseFailed("handshake: no %s within %.0f s (%s)" % (
                "SETTINGS" if not self.server_settings_seen else "SETTINGS ACK", TIMEOUT, self.events()))
        except ConnectionError:
            raise CaseFailed("handshake: the server closed the connection (%s)" % self.events())
        return self

    server_settings_seen = False

    def new_sid(self):
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def stream(self, sid):
        st = self.streams.get(sid)
        if st is None:
            st = self.streams[sid] = _Stream(sid)
        return st

    def fields(self, tag, path=UNARY_PATH, extra=(), drop=(), replace=None):
        """A gRPC request's header list (pseudo-headers first), tagged; drop: names
        left out; replace: {name: value} in place."""
        replace = replace or {}
        base = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.target.authority),
                ("content-type", "application/grpc"), ("te", "trailers"), ("x-case", tag)]
        out = [(n, replace.get(n, v)) for n, v in base if n not in drop]
        return out + list(extra)

    def headers(self, sid, fields, end_stream=False, end_headers=True, flags=0, block=None):
        """A HEADERS frame on sid (block: a raw header block instead of fields)."""
        self.stream(sid)
        block = hpack_literal(fields) if block is None else block
        self.send(HEADERS, flags | (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0), sid,
                  block)

    def data(self, sid, payload, end_stream=True, flags=0):
        self.send(DATA, flags | (END_STREAM if end_stream else 0), sid, payload)

    def unary(self, tag, sid=None):
        """A complete valid request (HEADERS + DATA END_STREAM); returns its sid."""
        sid = sid or self.new_sid()
        self.headers(sid, self.fields(tag))
        self.data(sid, hello_body())
        return sid

    def expand(self, tag, count=0, interval_ms=100, sid=None, end_stream=True):
        """Echo.Expand: count 0 streams until cancelled (a stream the server holds open)."""
        sid = sid or self.new_sid()
        self.headers(sid, self.fields(tag, path=STREAM_PATH))
        self.data(sid, expand_body(tag, count, interval_ms), end_stream=end_stream)
        return sid

    def ping(self, payload, flags=0, sid=0):
        self.send(PING, flags, sid, payload)

    # -- reading

    def _recv_exact(self, n, deadline):
        while len(self.rbuf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout()
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise _Timeout()
            except OSError as e:
                self.peer_closed = True
                self.log.append("connection reset (%s)" % e.__class__.__name__)
                raise ConnectionError("reset")
            if not chunk:
                self.peer_closed = True
                self.log.append("connection closed")
                raise ConnectionError("closed")
            self.rbuf += chunk
        out = bytes(self.rbuf[:n])
        del self.rbuf[:n]
        return out

    def read(self, deadline):
        """Reads and handles one frame; returns (type, flags, sid, payload). Raises
        _Timeout at the deadline, ConnectionError once the server closed."""
        if self.peer_closed:
            raise ConnectionError("closed")
        head = self._recv_exact(9, deadline)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        sid = struct.unpack(">I", head[5:9])[0] & 0x7fffffff
        payload = self._recv_exact(length, deadline) if length else b""
        if self.first_frame is None:
            self.first_frame = (ftype, flags)
        if ftype == SETTINGS:
            if flags & ACK:
                self.settings_acked += 1
            else:
                self.server_settings_seen = True
                for i in range(0, len(payload) - 5, 6):
                    k, v = struct.unpack(">HI", payload[i:i + 6])
                    self.server_settings[k] = v
                self.send(SETTINGS, ACK, 0)
        elif ftype == PING:
            if flags & ACK:
                self.ping_acks.append(payload)
            else:
                self.send(PING, ACK, 0, payload)
        elif ftype == GOAWAY and len(payload) >= 8:
            last, code = struct.unpack(">II", payload[:8])
            if self.goaway is None:
                self.goaway = (last & 0x7fffffff, code)
            self.log.append("GOAWAY(%s, last stream %d%s)" % (
                err_name(code), last & 0x7fffffff,
                ", %r" % payload[8:8 + 80].decode("latin-1") if len(payload) > 8 else ""))
        elif ftype == RST_STREAM and len(payload) == 4:
            code = struct.unpack(">I", payload)[0]
            st = self.stream(sid)
            if st.reset is None:
                st.reset = code
            self.log.append("RST_STREAM(stream %d, %s)" % (sid, err_name(code)))
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                body, pad = payload, 0
                if flags & PADDED:
                    pad, body = body[0], body[1:]
                if flags & PRIORITY_FLAG:
                    body = body[5:]
                self.hblock = (sid, flags, bytearray(body[:len(body) - pad]))
            elif self.hblock is not None:
                self.hblock[2].extend(payload)
            if flags & END_HEADERS and self.hblock is not None:
                hsid, hflags, block = self.hblock
                self.hblock = None
                try:
                    fields = self.decoder.decode(bytes(block))
                except AssertionError as e:
                    self.hpack_error = str(e)
                    fields = []
                st = self.stream(hsid)
                st.blocks.append(fields)
                if hflags & END_STREAM:
                    st.ended = True
                if len(st.blocks) == 1:
                    self.log.append("HEADERS(stream %d, :status %s)" % (hsid, st.status))
        elif ftype == DATA:
            body = payload
            if flags & PADDED and body:
                body = body[1:len(body) - body[0]]
            st = self.stream(sid)
            st.data += body
            st.data_frames.append(len(body))
            if flags & END_STREAM:
                st.ended = True
            if self.auto_credit and length:
                inc = struct.pack(">I", length)
                self.send_raw(self.frame(WINDOW_UPDATE, 0, 0, inc) +
                              (self.frame(WINDOW_UPDATE, 0, sid, inc) if not st.ended else b""))
        return ftype, flags, sid, payload

    def read_until(self, pred, timeout=TIMEOUT, what="the server's answer"):
        """Reads until pred() is true. Raises CaseFailed on timeout or close (pred unmet)."""
        deadline = time.monotonic() + timeout
        while not pred():
            try:
                self.read(deadline)
            except _Timeout:
                raise CaseFailed("no %s within %.0f s (%s)" % (what, timeout, self.events()))
            except ConnectionError:
                if pred():
                    return
                raise CaseFailed("the connection closed before %s (%s)" % (what, self.events()))

    def drain(self, timeout=TIMEOUT):
        """Reads until the server closes or timeout; True if it closed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.read(deadline)
            except _Timeout:
                return False
            except ConnectionError:
                return True

    def events(self):
        out = list(self.log[-8:])
        if self.send_failed is not None:
            out.append("our send failed: %s" % self.send_failed.__class__.__name__)
        if self.hpack_error:
            out.append("undecodable header block from the server")
        return "; ".join(out) or "nothing received"


# ---------------------------------------------------------------------------- expectations

def expect_conn_error(c, codes, goaway_optional=False):
    """A GOAWAY with one of codes, then the connection closed by the server."""
    deadline = time.monotonic() + TIMEOUT
    while c.goaway is None and not c.peer_closed:
        try:
            c.read(deadline)
        except _Timeout:
            break
        except ConnectionError:
            break
    want = "connection error %s (GOAWAY%s, then close)" % (codes_text(codes), " optional" if goaway_optional else "")
    if c.goaway is None:
        if c.peer_closed and goaway_optional:
            return PASS
        if c.peer_closed:
            raise CaseFailed("expected %s; the connection closed without a GOAWAY (%s)" % (want, c.events()))
        raise CaseFailed("expected %s; got no GOAWAY within %.0f s (%s)" % (want, TIMEOUT, c.events()))
    if c.goaway[1] not in codes:
        raise CaseFailed("expected %s; got %s" % (want, c.events()))
    if not c.peer_closed and not c.drain():
        raise CaseFailed("expected %s; the GOAWAY came but the connection stayed open %.0f s (%s)"
                         % (want, TIMEOUT, c.events()))
    return PASS


def expect_stream_error(c, sid, codes, either=False, probe=True, malformed=False):
    """A RST_STREAM with one of codes on sid, and the connection usable after it
    (a valid request on a new stream succeeds). either: a connection error with
    one of codes passes too (the RFC lets the endpoint choose); otherwise it is
    CONN_FOR_STREAM. malformed: sid carries a malformed request, which must not
    be answered with a success (a 4xx before the RST_STREAM is allowed)."""
    kind = "stream or connection error" if either else "stream error"
    want = "%s %s" % (kind, codes_text(codes))
    deadline = time.monotonic() + TIMEOUT
    st = c.stream(sid)
    while st.reset is None and c.goaway is None and not c.peer_closed:
        if st.ended:  # answered and ended: a reset may still follow it, but not much later
            deadline = min(deadline, time.monotonic() + 0.5 * SLOW)
        try:
            c.read(deadline)
        except _Timeout:
            break
        except ConnectionError:
            break
    if st.reset is not None:
        if st.reset not in codes:
            raise CaseFailed("expected %s; got %s" % (want, c.events()))
        if malformed and st.status and st.status.startswith("2"):
            raise CaseFailed("expected %s; the malformed request was answered %s before its reset"
                             % (want, st.status))
        if probe:
            expect_usable(c, "after the %s" % want)
        return PASS
    if c.goaway is not None and c.goaway[1] in codes:
        c.drain()
        if either:
            return PASS
        raise _ConnForStream("expected %s (RST_STREAM, connection goes on); got a connection error instead: %s"
                             % (want, c.events()))
    if malformed and (st.blocks or st.ended):
        raise CaseFailed("expected %s; got a response instead: %s (%s)" % (want, st.describe(), c.events()))
    if c.goaway is not None or c.peer_closed:
        raise CaseFailed("expected %s; got %s" % (want, c.events()))
    raise CaseFailed("expected %s; got no RST_STREAM on stream %d and no GOAWAY within %.0f s (%s; %s)"
                     % (want, sid, TIMEOUT, st.describe(), c.events()))


class _ConnForStream(CaseFailed):
    pass


def expect_response(c, sid, timeout=PROBE_TIMEOUT, what="the response"):
    """sid completes with :status 200 and grpc-status 0."""
    st = c.stream(sid)
    try:
        c.read_until(lambda: st.ended or st.reset is not None or c.goaway is not None, timeout, what)
    except CaseFailed:
        raise CaseFailed("%s: expected :status 200, grpc-status 0; %s (%s)" % (what, st.describe(), c.events()))
    if st.reset is not None or st.status != "200" or st.header("grpc-status", -1) != "0":
        raise CaseFailed("%s: expected :status 200, grpc-status 0; got %s (%s)" % (what, st.describe(), c.events()))
    return st


def expect_usable(c, why=""):
    """The connection still serves: a valid gRPC request on a new stream succeeds."""
    if c.goaway is not None or c.peer_closed:
        raise CaseFailed("the connection did not go on %s (%s)" % (why, c.events()))
    sid = c.unary(c.tag + "-probe")
    expect_response(c, sid, what="a valid request on stream %d %s" % (sid, why))
    return PASS


def expect_ping_ack(c, payload=b"h2spec\x00\x01"):
    """A PING is answered with a PING ACK echoing the payload, no error on the way."""
    c.ping(payload)
    n = len(c.ping_acks)
    c.read_until(lambda: len(c.ping_acks) > n or c.goaway is not None, what="PING ACK")
    if c.goaway is not None:
        raise CaseFailed("expected the PING answered; got %s" % c.events())
    if c.ping_acks[n] != payload:
        raise CaseFailed("PING ACK carries %r, not the PING's %r" % (c.ping_acks[n], payload))
    return PASS


def expect_alive(c):
    """The frame was ignored: PING answered, then a valid request succeeds."""
    expect_ping_ack(c)
    return expect_usable(c, "after the frame")


def expect_not_forwarded(c, tag, handled_only=False):
    """The upstream never saw the request tagged `tag` (handled_only: its handler
    never ran: the headers may have been forwarded before the body showed it
    malformed)."""
    up = c.target.upstream
    if up is None:
        return
    if handled_only:
        if up.handled(tag):
            raise CaseFailed("the malformed request reached the upstream's handler (tag %s)" % tag)
    elif up.started(tag):
        raise CaseFailed("the malformed request was forwarded: the upstream saw a call tagged %s" % tag)


# ---------------------------------------------------------------------------- the case list

class Case:
    def __init__(self, cid, title, expect, level, fn, note=""):
        self.id, self.title, self.expect, self.level, self.fn, self.note = cid, title, expect, level, fn, note

    @property
    def section(self):
        return self.id.split("/")[0]

    @property
    def name(self):
        return "%s %s → %s" % (self.id, self.title, self.expect)


CASES = []

SECTIONS = {
    "3.5": "HTTP/2 Connection Preface", "4.1": "Frame Format", "4.2": "Frame Size",
    "4.3": "Field Section Compression and Decompression", "5.1": "Stream States",
    "5.1.1": "Stream Identifiers", "5.1.2": "Stream Concurrency", "5.3.1": "Stream Dependencies",
    "5.4.1": "Connection Error Handling", "5.5": "Extending HTTP/2", "6.1": "DATA", "6.2": "HEADERS",
    "6.3": "PRIORITY", "6.4": "RST_STREAM", "6.5": "SETTINGS", "6.5.2": "Defined Settings",
    "6.5.3": "Settings Synchronization", "6.6": "PUSH_PROMISE", "6.7": "PING", "6.8": "GOAWAY",
    "6.9": "WINDOW_UPDATE", "6.9.1": "The Flow-Control Window", "6.9.2": "Initial Flow-Control Window Size",
    "6.10": "CONTINUATION", "8.1": "HTTP Message Framing", "8.1.1": "Malformed Messages (content-length)",
    "8.2.1": "Field Validity", "8.2.2": "Connection-Specific Header Fields", "8.3": "Pseudo-Header Fields",
    "8.3.1": "Request Pseudo-Header Fields",
}


def case(cid, title, expect, level, note=""):
    def register(fn):
        CASES.append(Case(cid, title, expect, level, fn, note))
        return fn
    return register


def _open(c):
    """A handshaken connection."""
    return c.handshake()


def _open_stream(c, tag):
    """An open stream (request headers sent, body not yet): the upstream call waits for its message."""
    sid = c.new_sid()
    c.headers(sid, c.fields(tag))
    return sid


def _half_closed_remote(c, tag):
    """A stream in half-closed (remote): the request ended, the server still streams
    (Echo.Expand without end); returns once its first response DATA is in."""
    sid = c.expand(tag, count=0, interval_ms=100)
    st = c.stream(sid)
    c.read_until(lambda: st.data_frames or st.ended or st.reset is not None or c.goaway is not None,
                 PROBE_TIMEOUT, "the streaming response to stream %d" % sid)
    if st.reset is not None or st.ended or st.status != "200":
        raise CaseFailed("setup: the streaming request did not stream: %s" % st.describe())
    return sid


def _closed_by_client_reset(c, tag):
    sid = _half_closed_remote(c, tag)
    c.send(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
    return sid


def _closed_by_end_stream(c, tag):
    """A stream both sides ended (a complete unary call)."""
    sid = c.unary(tag)
    expect_response(c, sid, what="setup: the unary call on stream %d" % sid)
    return sid


def _malformed(c, fields, body=None, path_tag=None):
    """Sends a malformed request (HEADERS + DATA END_STREAM to Echo.Expand), expects
    a stream error PROTOCOL_ERROR, the connection usable after, and nothing forwarded."""
    bad = c.tag + "-bad"
    sid = c.new_sid()
    c.headers(sid, fields)
    c.data(sid, expand_body(bad, count=1) if body is None else body)
    verdict = expect_stream_error(c, sid, (PROTOCOL_ERROR,), malformed=True)
    expect_not_forwarded(c, bad)
    return verdict


def _bad_fields(c, **kw):
    return c.fields(c.tag + "-bad", path=STREAM_PATH, **kw)


# -- 3.5 HTTP/2 Connection Preface

@case("3.5/1", "Sends client connection preface", "server SETTINGS first, our SETTINGS acknowledged", MUST)
def _case_1(c):
    _open(c)
    if c.first_frame != (SETTINGS, 0):
        raise CaseFailed("the server's first frame was %s, not SETTINGS" % FRAME_NAMES.get(c.first_frame[0]))
    return expect_alive(c)


@case("3.5/2", "Sends invalid connection preface", "PROTOCOL_ERROR (connection; GOAWAY optional)", MUST,
      "RFC 9113 §3.4: the GOAWAY MAY be omitted: an invalid preface means no HTTP/2 peer")
def _case_2(c):
    c.send_raw(b"INVALID CONNECTION PREFACE\r\n\r\n")
    return expect_conn_error(c, (PROTOCOL_ERROR,), goaway_optional=True)


@case("3.5/3", "Sends a PING instead of SETTINGS after the preface", "PROTOCOL_ERROR (connection)", MUST,
      "RFC 9113 §3.4: the preface MUST be followed by a SETTINGS frame")
def _case_3(c):
    c.send_raw(PREFACE + c.frame(PING, 0, 0, b"\x00" * 8))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


# -- 4.1 Frame Format

@case("4.1/1", "Sends a frame with unknown type", "ignored", MUST)
def _case_4(c):
    _open(c)
    c.send(0x16, 0, 0, b"\x00" * 8)
    return expect_alive(c)


@case("4.1/2", "Sends a frame with undefined flag", "ignored", MUST)
def _case_5(c):
    _open(c)
    c.send(PING, 0x16, 0, b"\x00" * 8)  # no ACK bit: must still be answered
    c.read_until(lambda: c.ping_acks or c.goaway is not None, what="the PING ACK")
    if c.goaway is not None:
        raise CaseFailed("expected the PING answered; got %s" % c.events())
    return expect_alive(c)


@case("4.1/3", "Sends a frame with reserved field bit", "ignored (request served)", MUST)
def _case_6(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid | 0x80000000, c.fields(c.tag))
    c.stream(sid)
    c.data(sid, hello_body())
    expect_response(c, sid, what="the request whose HEADERS had the reserved bit set")
    return expect_alive(c)


# -- 4.2 Frame Size

@case("4.2/1", "Sends a DATA frame with 2^14 octets in length", "accepted", MUST)
def _case_7(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid, c.fields(c.tag))
    body = grpc_frame(_pb_string(1, "x" * 16376))
    assert len(body) == 16384
    c.data(sid, body)
    expect_response(c, sid, what="the request with a 16384-octet DATA frame")
    return PASS


@case("4.2/2", "Sends a DATA frame exceeding SETTINGS_MAX_FRAME_SIZE", "FRAME_SIZE_ERROR (stream or connection)",
      MUST, "RFC 9113 §4.2: a frame that can alter the connection's state must be a connection error; DATA may be "
            "either")
def _case_8(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    size = c.server_settings.get(S_MAX_FRAME_SIZE, 16384)
    c.data(sid, b"\x00" * (size + 1))
    return expect_stream_error(c, sid, (FRAME_SIZE_ERROR,), either=True)


@case("4.2/3", "Sends a HEADERS frame exceeding SETTINGS_MAX_FRAME_SIZE", "FRAME_SIZE_ERROR (connection)", MUST)
def _case_9(c):
    _open(c)
    size = c.server_settings.get(S_MAX_FRAME_SIZE, 16384)
    c.headers(c.new_sid(), c.fields(c.tag + "-bad", extra=[("x-big", "a" * (size + 16))]), end_stream=True)
    verdict = expect_conn_error(c, (FRAME_SIZE_ERROR,))
    expect_usable_new(c)
    expect_not_forwarded(c, c.tag + "-bad")
    return verdict


def expect_usable_new(c):
    """After a connection error: the server serves a new connection (the probe
    also orders the upstream check after everything the case sent)."""
    c2 = Conn(c.target, c.tag + "-after")
    try:
        c2.handshake()
        expect_usable(c2, "on a new connection after the connection error")
    finally:
        c2.close()


# -- 4.3 Field Section Compression and Decompression (and RFC 7541)

@case("4.3/1", "Sends invalid header block fragment", "COMPRESSION_ERROR (connection)", MUST)
def _case_10(c):
    _open(c)
    # A literal with incremental indexing, new name, whose length runs past the block.
    c.headers(c.new_sid(), None, end_stream=True, block=b"\x40\x0a\x63\x75\x73\x74\x6f\x6d")
    return expect_conn_error(c, (COMPRESSION_ERROR,))


@case("4.3/2", "Sends a PRIORITY frame while sending the header blocks", "PROTOCOL_ERROR (connection)", MUST)
def _case_11(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid, c.fields(c.tag + "-bad"), end_stream=True, end_headers=False)
    c.send(PRIORITY, 0, sid, struct.pack(">IB", 0, 15))
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-more", "1")]))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("4.3/3", "Sends a HEADERS frame to another stream while sending the header blocks",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_12(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid, c.fields(c.tag + "-bad"), end_stream=True, end_headers=False)
    c.headers(c.new_sid(), c.fields(c.tag + "-bad2"), end_stream=True)
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("4.3/4", "Sends an indexed field with an index past both tables (RFC 7541 §2.3.3)",
      "COMPRESSION_ERROR (connection)", MUST)
def _case_13(c):
    _open(c)
    c.headers(c.new_sid(), None, end_stream=True, block=hpack_literal(c.fields(c.tag + "-bad")) +
              hpack_int(1000, 7, 0x80))
    return expect_conn_error(c, (COMPRESSION_ERROR,))


@case("4.3/5", "Sends a dynamic table size update above SETTINGS_HEADER_TABLE_SIZE (RFC 7541 §6.3)",
      "COMPRESSION_ERROR (connection)", MUST)
def _case_14(c):
    _open(c)
    limit = c.server_settings.get(S_HEADER_TABLE_SIZE, 4096)
    c.headers(c.new_sid(), None, end_stream=True,
              block=hpack_int(limit + 1, 5, 0x20) + hpack_literal(c.fields(c.tag + "-bad")))
    return expect_conn_error(c, (COMPRESSION_ERROR,))


@case("4.3/6", "Sends a dynamic table size update after a field (RFC 7541 §4.2)",
      "COMPRESSION_ERROR (connection)", MUST)
def _case_15(c):
    _open(c)
    c.headers(c.new_sid(), None, end_stream=True,
              block=hpack_literal(c.fields(c.tag + "-bad")) + hpack_int(0, 5, 0x20))
    return expect_conn_error(c, (COMPRESSION_ERROR,))


# -- 5.1 Stream States

@case("5.1/1", "Sends a DATA frame on idle stream", "PROTOCOL_ERROR (connection)", MUST)
def _case_16(c):
    _open(c)
    c.data(c.new_sid(), b"test")
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("5.1/2", "Sends a RST_STREAM frame on idle stream", "PROTOCOL_ERROR (connection)", MUST)
def _case_17(c):
    _open(c)
    c.send(RST_STREAM, 0, c.new_sid(), struct.pack(">I", CANCEL))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("5.1/3", "Sends a WINDOW_UPDATE frame on idle stream", "PROTOCOL_ERROR (connection)", MUST)
def _case_18(c):
    _open(c)
    c.send(WINDOW_UPDATE, 0, c.new_sid(), struct.pack(">I", 100))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("5.1/4", "Sends a CONTINUATION frame on idle stream", "PROTOCOL_ERROR (connection)", MUST)
def _case_19(c):
    _open(c)
    c.send(CONTINUATION, END_HEADERS, c.new_sid(), hpack_literal(c.fields(c.tag + "-bad")))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("5.1/5", "Sends a DATA frame on half-closed (remote) stream", "STREAM_CLOSED (stream)", MUST,
      "RFC 9113 §5.1 half-closed (remote): MUST respond with a stream error")
def _case_20(c):
    _open(c)
    sid = _half_closed_remote(c, c.tag)
    c.data(sid, b"test")
    return expect_stream_error(c, sid, (STREAM_CLOSED,))


@case("5.1/6", "Sends a HEADERS frame on half-closed (remote) stream", "STREAM_CLOSED (stream)", MUST)
def _case_21(c):
    _open(c)
    sid = _half_closed_remote(c, c.tag)
    c.headers(sid, [("x-trailer", "1")], end_stream=True)
    return expect_stream_error(c, sid, (STREAM_CLOSED,))


@case("5.1/7", "Sends a CONTINUATION frame on half-closed (remote) stream",
      "STREAM_CLOSED or PROTOCOL_ERROR (stream or connection)", MUST,
      "a CONTINUATION without an open header block is also a connection error PROTOCOL_ERROR (§6.10)")
def _case_22(c):
    _open(c)
    sid = _half_closed_remote(c, c.tag)
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-trailer", "1")]))
    return expect_stream_error(c, sid, (STREAM_CLOSED, PROTOCOL_ERROR), either=True)


@case("5.1/8", "Sends a DATA frame after sending RST_STREAM frame", "STREAM_CLOSED (stream or connection)", MAY,
      "RFC 7540 (h2spec): MUST stream error; RFC 9113 §5.1 closed: MAY treat as a connection error STREAM_CLOSED")
def _case_23(c):
    _open(c)
    sid = _closed_by_client_reset(c, c.tag)
    c.data(sid, b"test")
    return expect_stream_error(c, sid, (STREAM_CLOSED,), either=True)


@case("5.1/9", "Sends a HEADERS frame after sending RST_STREAM frame", "STREAM_CLOSED (stream or connection)",
      MAY, "as 5.1/8")
def _case_24(c):
    _open(c)
    sid = _closed_by_client_reset(c, c.tag)
    c.headers(sid, [("x-trailer", "1")], end_stream=True)
    return expect_stream_error(c, sid, (STREAM_CLOSED,), either=True)


@case("5.1/10", "Sends a CONTINUATION frame after sending RST_STREAM frame",
      "STREAM_CLOSED or PROTOCOL_ERROR (stream or connection)", MAY, "as 5.1/7 and 5.1/8")
def _case_25(c):
    _open(c)
    sid = _closed_by_client_reset(c, c.tag)
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-trailer", "1")]))
    return expect_stream_error(c, sid, (STREAM_CLOSED, PROTOCOL_ERROR), either=True)


@case("5.1/11", "Sends a DATA frame on closed (END_STREAM both ways) stream",
      "STREAM_CLOSED (stream or connection)", MAY,
      "RFC 7540 (h2spec): MUST connection error; RFC 9113 §5.1 closed: MAY treat as a connection error")
def _case_26(c):
    _open(c)
    sid = _closed_by_end_stream(c, c.tag)
    c.data(sid, b"test")
    return expect_stream_error(c, sid, (STREAM_CLOSED,), either=True)


@case("5.1/12", "Sends a HEADERS frame on closed (END_STREAM both ways) stream",
      "STREAM_CLOSED (stream or connection)", MAY, "as 5.1/11")
def _case_27(c):
    _open(c)
    sid = _closed_by_end_stream(c, c.tag)
    c.headers(sid, [("x-trailer", "1")], end_stream=True)
    return expect_stream_error(c, sid, (STREAM_CLOSED,), either=True)


@case("5.1/13", "Sends a CONTINUATION frame on closed (END_STREAM both ways) stream",
      "STREAM_CLOSED or PROTOCOL_ERROR (stream or connection)", MAY, "as 5.1/7 and 5.1/11")
def _case_28(c):
    _open(c)
    sid = _closed_by_end_stream(c, c.tag)
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-trailer", "1")]))
    return expect_stream_error(c, sid, (STREAM_CLOSED, PROTOCOL_ERROR), either=True)


@case("5.1/14", "Sends a PRIORITY frame on idle stream", "accepted", MUST,
      "RFC 9113 §5.1 idle: PRIORITY is allowed on an idle stream")
def _case_29(c):
    _open(c)
    c.send(PRIORITY, 0, c.next_sid, struct.pack(">IB", 0, 15))  # the stream the probe then opens
    return expect_alive(c)


@case("5.1/15", "Sends a WINDOW_UPDATE frame on half-closed (remote) stream", "accepted", MUST,
      "RFC 9113 §5.1 half-closed (remote): WINDOW_UPDATE, PRIORITY and RST_STREAM are allowed")
def _case_30(c):
    _open(c)
    sid = _half_closed_remote(c, c.tag)
    c.send(WINDOW_UPDATE, 0, sid, struct.pack(">I", 1000))
    c.send(PRIORITY, 0, sid, struct.pack(">IB", 0, 15))
    verdict = expect_alive(c)
    if c.stream(sid).reset is not None:
        raise CaseFailed("the half-closed stream was reset: %s" % c.stream(sid).describe())
    return verdict


# -- 5.1.1 Stream Identifiers

@case("5.1.1/1", "Sends even-numbered stream identifier", "PROTOCOL_ERROR (connection)", MUST)
def _case_31(c):
    _open(c)
    c.headers(2, c.fields(c.tag + "-bad"), end_stream=True)
    verdict = expect_conn_error(c, (PROTOCOL_ERROR,))
    expect_usable_new(c)
    expect_not_forwarded(c, c.tag + "-bad")
    return verdict


@case("5.1.1/2", "Sends stream identifier that is numerically smaller than previous",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_32(c):
    _open(c)
    first = 5
    c.next_sid = 7
    c.unary(c.tag, sid=first)
    expect_response(c, first, what="the request on stream 5")
    c.headers(3, c.fields(c.tag + "-bad"), end_stream=True)
    verdict = expect_conn_error(c, (PROTOCOL_ERROR,))
    expect_usable_new(c)
    expect_not_forwarded(c, c.tag + "-bad")
    return verdict


# -- 5.1.2 Stream Concurrency

@case("5.1.2/1", "Sends HEADERS frames that cause the advertised SETTINGS_MAX_CONCURRENT_STREAMS to be exceeded",
      "PROTOCOL_ERROR or REFUSED_STREAM (stream)", MUST)
def _case_33(c):
    _open(c)
    limit = c.server_settings.get(S_MAX_CONCURRENT_STREAMS)
    if limit is None or limit > 2000:
        raise CaseFailed("the server advertises no usable SETTINGS_MAX_CONCURRENT_STREAMS (%r)" % limit)
    sids = [c.new_sid() for _ in range(limit)]
    c.send_raw(b"".join(c.frame(HEADERS, END_HEADERS, sid, hpack_literal(c.fields(c.tag + "-open")))
                        for sid in sids))
    for sid in sids:
        c.stream(sid)
    bad = c.new_sid()
    c.headers(bad, c.fields(c.tag + "-bad"))
    c.data(bad, hello_body())
    verdict = expect_stream_error(c, bad, (PROTOCOL_ERROR, REFUSED_STREAM), probe=False, malformed=True)
    early = [sid for sid in sids if c.stream(sid).reset is not None]
    if early:
        raise CaseFailed("streams within the limit were reset: %s" % c.stream(early[0]).describe())
    # Give the streams back, then the connection must serve again.
    c.send_raw(b"".join(c.frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)) for sid in sids))
    expect_usable(c, "after the refused stream and the cancel of the others")
    expect_not_forwarded(c, c.tag + "-bad")
    return verdict


# -- 5.3.1 Stream Dependencies

@case("5.3.1/1", "Sends HEADERS frame that depends on itself", "PROTOCOL_ERROR (stream)", MUST,
      "RFC 9113 §5.3.1: a stream error (the suite does not take a connection error for it)")
def _case_34(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid, None, flags=PRIORITY_FLAG,
              block=struct.pack(">IB", sid, 15) + hpack_literal(c.fields(c.tag + "-bad", path=STREAM_PATH)))
    c.data(sid, expand_body(c.tag + "-bad", count=1))
    verdict = expect_stream_error(c, sid, (PROTOCOL_ERROR,), malformed=True)
    expect_not_forwarded(c, c.tag + "-bad")
    return verdict


@case("5.3.1/2", "Sends PRIORITY frame that depends on itself", "PROTOCOL_ERROR (stream)", MUST)
def _case_35(c):
    _open(c)
    sid = c.new_sid()
    c.send(PRIORITY, 0, sid, struct.pack(">IB", sid, 15))
    return expect_stream_error(c, sid, (PROTOCOL_ERROR,))


# -- 5.4.1 Connection Error Handling

@case("5.4.1/1", "Sends an invalid PING frame for connection close", "GOAWAY, then close", SHOULD,
      "closing is a MUST, the GOAWAY before it a SHOULD (RFC 9113 §5.4.1)")
def _case_36(c):
    _open(c)
    c.send(PING, 0, 0, b"\x00" * 6)
    return expect_conn_error(c, (FRAME_SIZE_ERROR,))


@case("5.4.1/2", "Sends an invalid PING frame to receive GOAWAY frame", "GOAWAY naming the last stream processed",
      SHOULD)
def _case_37(c):
    _open(c)
    sid = c.unary(c.tag)
    expect_response(c, sid, what="the request on stream 1")
    c.send(PING, 0, 0, b"\x00" * 6)
    expect_conn_error(c, (FRAME_SIZE_ERROR,))
    if c.goaway[0] != sid:
        raise CaseFailed("GOAWAY's last stream id is %d, not %d" % (c.goaway[0], sid))
    return PASS


# -- 5.5 Extending HTTP/2

@case("5.5/1", "Sends an unknown extension frame", "ignored", MUST)
def _case_38(c):
    _open(c)
    c.send(0xff, 0xff, 0, b"\x00" * 8)
    return expect_alive(c)


@case("5.5/2", "Sends an unknown extension frame in the middle of a header block", "PROTOCOL_ERROR (connection)",
      MUST)
def _case_39(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid, c.fields(c.tag + "-bad"), end_stream=True, end_headers=False)
    c.send(0xff, 0, sid, b"\x00" * 8)
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-more", "1")]))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


# -- 6.1 DATA

@case("6.1/1", "Sends a DATA frame with 0x0 stream identifier", "PROTOCOL_ERROR (connection)", MUST)
def _case_40(c):
    _open(c)
    c.data(0, b"test")
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.1/2", "Sends a DATA frame on a stream that is not open or half-closed (local)",
      "STREAM_CLOSED (stream)", MUST, "RFC 9113 §6.1: MUST respond with a stream error STREAM_CLOSED")
def _case_41(c):
    _open(c)
    sid = c.expand(c.tag, count=0, interval_ms=100)  # END_STREAM sent: half-closed (remote) at once
    c.data(sid, b"test")
    return expect_stream_error(c, sid, (STREAM_CLOSED,))


@case("6.1/3", "Sends a DATA frame with invalid pad length", "PROTOCOL_ERROR (connection)", MUST)
def _case_42(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    c.send(DATA, PADDED | END_STREAM, sid, bytes([6]) + b"test")  # pad length 6 > rest 4
    return expect_conn_error(c, (PROTOCOL_ERROR,))


# -- 6.2 HEADERS

@case("6.2/1", "Sends a HEADERS frame without END_HEADERS followed by a PRIORITY frame",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_43(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid, c.fields(c.tag + "-bad"), end_stream=True, end_headers=False)
    c.send(PRIORITY, 0, sid, struct.pack(">IB", 0, 15))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.2/2", "Sends a HEADERS frame to another stream while sending a HEADERS frame",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_44(c):
    _open(c)
    c.headers(c.new_sid(), c.fields(c.tag + "-bad"), end_stream=True, end_headers=False)
    c.headers(c.new_sid(), c.fields(c.tag + "-bad2"), end_stream=True)
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.2/3", "Sends a HEADERS frame with 0x0 stream identifier", "PROTOCOL_ERROR (connection)", MUST)
def _case_45(c):
    _open(c)
    c.headers(0, c.fields(c.tag + "-bad"), end_stream=True)
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.2/4", "Sends a HEADERS frame with invalid pad length", "PROTOCOL_ERROR (connection)", MUST)
def _case_46(c):
    _open(c)
    block = hpack_literal(c.fields(c.tag + "-bad"))
    c.headers(c.new_sid(), None, end_stream=True, flags=PADDED, block=bytes([len(block) + 1]) + block)
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.2/5", "Sends a HEADERS frame with padding and priority", "accepted", MUST)
def _case_47(c):
    _open(c)
    sid = c.new_sid()
    block = hpack_literal(c.fields(c.tag))
    c.headers(sid, None, flags=PADDED | PRIORITY_FLAG, block=bytes([4]) + struct.pack(">IB", 0, 15) + block +
              b"\x00" * 4)
    c.data(sid, hello_body())
    expect_response(c, sid, what="the padded HEADERS with priority")
    return PASS


# -- 6.3 PRIORITY

@case("6.3/1", "Sends a PRIORITY frame with 0x0 stream identifier", "PROTOCOL_ERROR (connection)", MUST)
def _case_48(c):
    _open(c)
    c.send(PRIORITY, 0, 0, struct.pack(">IB", 1, 15))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.3/2", "Sends a PRIORITY frame with a length other than 5 octets", "FRAME_SIZE_ERROR (stream)", MUST,
      "RFC 9113 §6.3: a stream error (the suite does not take a connection error for it)")
def _case_49(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    c.send(PRIORITY, 0, sid, struct.pack(">IB", 0, 15) + b"\x00")
    return expect_stream_error(c, sid, (FRAME_SIZE_ERROR,))


# -- 6.4 RST_STREAM

@case("6.4/1", "Sends a RST_STREAM frame with 0x0 stream identifier", "PROTOCOL_ERROR (connection)", MUST)
def _case_50(c):
    _open(c)
    c.send(RST_STREAM, 0, 0, struct.pack(">I", CANCEL))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.4/2", "Sends a RST_STREAM frame on an idle stream", "PROTOCOL_ERROR (connection)", MUST)
def _case_51(c):
    _open(c)
    c.send(RST_STREAM, 0, c.next_sid + 4, struct.pack(">I", CANCEL))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.4/3", "Sends a RST_STREAM frame with a length other than 4 octets", "FRAME_SIZE_ERROR (connection)", MUST)
def _case_52(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    c.send(RST_STREAM, 0, sid, struct.pack(">I", CANCEL) + b"\x00")
    return expect_conn_error(c, (FRAME_SIZE_ERROR,))


# -- 6.5 SETTINGS

@case("6.5/1", "Sends a SETTINGS frame with ACK flag and payload", "FRAME_SIZE_ERROR (connection)", MUST)
def _case_53(c):
    _open(c)
    c.send(SETTINGS, ACK, 0, struct.pack(">HI", S_ENABLE_PUSH, 0))
    return expect_conn_error(c, (FRAME_SIZE_ERROR,))


@case("6.5/2", "Sends a SETTINGS frame with a stream identifier other than 0x0", "PROTOCOL_ERROR (connection)",
      MUST)
def _case_54(c):
    _open(c)
    c.send(SETTINGS, 0, 1, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 65535))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.5/3", "Sends a SETTINGS frame with a length other than a multiple of 6 octets",
      "FRAME_SIZE_ERROR (connection)", MUST)
def _case_55(c):
    _open(c)
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 65535)[:3])
    return expect_conn_error(c, (FRAME_SIZE_ERROR,))


# -- 6.5.2 Defined Settings

@case("6.5.2/1", "SETTINGS_ENABLE_PUSH (0x2): Sends the value other than 0 or 1", "PROTOCOL_ERROR (connection)",
      MUST)
def _case_56(c):
    _open(c)
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_ENABLE_PUSH, 2))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.5.2/2", "SETTINGS_INITIAL_WINDOW_SIZE (0x4): Sends the value above the maximum flow control window size",
      "FLOW_CONTROL_ERROR (connection)", MUST)
def _case_57(c):
    _open(c)
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 2 ** 31))
    return expect_conn_error(c, (FLOW_CONTROL_ERROR,))


@case("6.5.2/3", "SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value below the initial value",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_58(c):
    _open(c)
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_MAX_FRAME_SIZE, 16383))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.5.2/4", "SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value above the maximum allowed frame size",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_59(c):
    _open(c)
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_MAX_FRAME_SIZE, 2 ** 24))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.5.2/5", "Sends a SETTINGS frame with unknown identifier", "ignored (SETTINGS ACK)", MUST)
def _case_60(c):
    _open(c)
    n = c.settings_acked
    c.send(SETTINGS, 0, 0, struct.pack(">HI", 0xff, 1))
    c.read_until(lambda: c.settings_acked > n or c.goaway is not None, what="SETTINGS ACK")
    if c.goaway is not None:
        raise CaseFailed("expected the SETTINGS acknowledged; got %s" % c.events())
    return expect_alive(c)


# -- 6.5.3 Settings Synchronization

def _first_data_len(c, settings, after_headers=None, what="the first DATA frame"):
    """Handshakes with settings, no window credited back; a unary request; returns
    (sid, the stream) once its first DATA frame is in."""
    c.auto_credit = False
    c.handshake(settings)
    sid = c.unary(c.tag)
    if after_headers:
        after_headers(c, sid)
    st = c.stream(sid)
    c.read_until(lambda: st.data_frames or st.ended or st.reset is not None or c.goaway is not None,
                 PROBE_TIMEOUT, what)
    if not st.data_frames:
        raise CaseFailed("expected DATA on stream %d; got %s (%s)" % (sid, st.describe(), c.events()))
    return sid, st


@case("6.5.3/1", "Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE", "the last one applies (1-octet DATA)",
      MUST, "RFC 9113 §6.5.3: values are processed in the order they appear")
def _case_61(c):
    _, st = _first_data_len(c, [(S_INITIAL_WINDOW_SIZE, 100), (S_INITIAL_WINDOW_SIZE, 1)])
    if st.data_frames[0] != 1:
        raise CaseFailed("the first DATA frame carries %d octets with a window of 1" % st.data_frames[0])
    return PASS


@case("6.5.3/2", "Sends a SETTINGS frame without ACK flag", "SETTINGS ACK", MUST)
def _case_62(c):
    _open(c)
    n = c.settings_acked
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 65535))
    c.read_until(lambda: c.settings_acked > n or c.goaway is not None, what="SETTINGS ACK")
    if c.goaway is not None:
        raise CaseFailed("expected a SETTINGS ACK; got %s" % c.events())
    return PASS


# -- 6.6 PUSH_PROMISE

@case("6.6/1", "Sends a PUSH_PROMISE frame (client to server)", "PROTOCOL_ERROR (connection)", MUST,
      "RFC 9113 §8.4: a client cannot push; §6.5.2: PUSH_PROMISE with push disabled is a PROTOCOL_ERROR")
def _case_63(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    c.send(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", sid + 1) + hpack_literal(c.fields(c.tag + "-bad")))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


# -- 6.7 PING

@case("6.7/1", "Sends a PING frame", "PING ACK with the same payload", MUST)
def _case_64(c):
    _open(c)
    return expect_ping_ack(c, b"\x01\x02\x03\x04\x05\x06\x07\x08")


@case("6.7/2", "Sends a PING frame with ACK", "not answered", MUST)
def _case_65(c):
    _open(c)
    c.ping(b"unsolici", flags=ACK)
    expect_ping_ack(c, b"solicitd")  # the first PING ACK must be the answer to this one
    return PASS


@case("6.7/3", "Sends a PING frame with a stream identifier field value other than 0x0",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_66(c):
    _open(c)
    c.ping(b"\x00" * 8, sid=1)
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.7/4", "Sends a PING frame with a length field value other than 8", "FRAME_SIZE_ERROR (connection)", MUST)
def _case_67(c):
    _open(c)
    c.ping(b"\x00" * 6)
    return expect_conn_error(c, (FRAME_SIZE_ERROR,))


# -- 6.8 GOAWAY

@case("6.8/1", "Sends a GOAWAY frame with a stream identifier other than 0x0", "PROTOCOL_ERROR (connection)", MUST)
def _case_68(c):
    _open(c)
    c.send(GOAWAY, 0, 1, struct.pack(">II", 0, NO_ERROR))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


# -- 6.9 WINDOW_UPDATE

@case("6.9/1", "Sends a WINDOW_UPDATE frame with a flow control window increment of 0",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_69(c):
    _open(c)
    c.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.9/2", "Sends a WINDOW_UPDATE frame with a flow control window increment of 0 on a stream",
      "PROTOCOL_ERROR (stream)", MUST, "RFC 9113 §6.9: a stream error for a stream-level WINDOW_UPDATE")
def _case_70(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    c.send(WINDOW_UPDATE, 0, sid, struct.pack(">I", 0))
    return expect_stream_error(c, sid, (PROTOCOL_ERROR,))


@case("6.9/3", "Sends a WINDOW_UPDATE frame with a length other than 4 octets", "FRAME_SIZE_ERROR (connection)",
      MUST)
def _case_71(c):
    _open(c)
    c.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 100) + b"\x00")
    return expect_conn_error(c, (FRAME_SIZE_ERROR,))


# -- 6.9.1 The Flow-Control Window

@case("6.9.1/1", "Sends SETTINGS_INITIAL_WINDOW_SIZE 1, then a request", "a 1-octet DATA frame", MUST)
def _case_72(c):
    _, st = _first_data_len(c, [(S_INITIAL_WINDOW_SIZE, 1)])
    if st.data_frames[0] != 1:
        raise CaseFailed("the first DATA frame carries %d octets with a window of 1" % st.data_frames[0])
    return PASS


@case("6.9.1/2", "Sends multiple WINDOW_UPDATE frames increasing the connection window above 2^31-1",
      "FLOW_CONTROL_ERROR (connection)", MUST)
def _case_73(c):
    _open(c)
    c.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x40000000))
    c.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x40000000))
    return expect_conn_error(c, (FLOW_CONTROL_ERROR,))


@case("6.9.1/3", "Sends multiple WINDOW_UPDATE frames increasing a stream window above 2^31-1",
      "FLOW_CONTROL_ERROR (stream)", MUST, "RFC 9113 §6.9.1: a stream error for a stream's window")
def _case_74(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    c.send(WINDOW_UPDATE, 0, sid, struct.pack(">I", 0x40000000))
    c.send(WINDOW_UPDATE, 0, sid, struct.pack(">I", 0x40000000))
    return expect_stream_error(c, sid, (FLOW_CONTROL_ERROR,))


# -- 6.9.2 Initial Flow-Control Window Size

@case("6.9.2/1", "Changes SETTINGS_INITIAL_WINDOW_SIZE after sending HEADERS frame", "a 1-octet DATA frame", MUST)
def _case_75(c):
    def widen(c, sid):
        c.send(SETTINGS, 0, 0, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 1))
    _, st = _first_data_len(c, [(S_INITIAL_WINDOW_SIZE, 0)], after_headers=widen)
    if st.data_frames[0] != 1:
        raise CaseFailed("the first DATA frame carries %d octets with a window of 1" % st.data_frames[0])
    return PASS


@case("6.9.2/2", "Sends a SETTINGS frame for window size to be negative", "flow control honours it (1-octet DATA)",
      MUST)
def _case_76(c):
    sid, st = _first_data_len(c, [(S_INITIAL_WINDOW_SIZE, 3)])
    c.read_until(lambda: sum(st.data_frames) >= 3 or st.ended or st.reset is not None, what="3 DATA octets")
    if sum(st.data_frames) != 3:
        raise CaseFailed("the stream window was 3 octets; %d came" % sum(st.data_frames))
    n = c.settings_acked
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 2))  # window: 3 - 3 + (2 - 3) = -1
    c.read_until(lambda: c.settings_acked > n, what="SETTINGS ACK")
    frames = len(st.data_frames)
    c.send(WINDOW_UPDATE, 0, sid, struct.pack(">I", 2))  # window: 1
    c.read_until(lambda: len(st.data_frames) > frames or st.reset is not None or c.goaway is not None,
                 what="DATA after the WINDOW_UPDATE")
    if st.reset is not None or c.goaway is not None:
        raise CaseFailed("expected a 1-octet DATA frame; got %s" % c.events())
    if st.data_frames[frames] != 1:
        raise CaseFailed("with a window of -1 + 2 the DATA frame carries %d octets" % st.data_frames[frames])
    return PASS


@case("6.9.2/3", "Sends a SETTINGS_INITIAL_WINDOW_SIZE settings with an exceeded maximum window size value",
      "FLOW_CONTROL_ERROR (connection)", MUST)
def _case_77(c):
    _open(c)
    c.send(SETTINGS, 0, 0, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 2 ** 31))
    return expect_conn_error(c, (FLOW_CONTROL_ERROR,))


# -- 6.10 CONTINUATION

@case("6.10/1", "Sends multiple CONTINUATION frames preceded by a HEADERS frame", "accepted", MUST)
def _case_78(c):
    _open(c)
    sid = c.new_sid()
    block = hpack_literal(c.fields(c.tag))
    third = len(block) // 3
    c.headers(sid, None, end_headers=False, block=block[:third])
    c.send(CONTINUATION, 0, sid, block[third:2 * third])
    c.send(CONTINUATION, END_HEADERS, sid, block[2 * third:])
    c.data(sid, hello_body())
    expect_response(c, sid, what="the request in HEADERS + 2 CONTINUATION")
    return PASS


@case("6.10/2", "Sends a CONTINUATION frame followed by any frame other than CONTINUATION",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_79(c):
    _open(c)
    sid = c.new_sid()
    block = hpack_literal(c.fields(c.tag + "-bad"))
    c.headers(sid, None, end_headers=False, block=block[:10])
    c.send(CONTINUATION, 0, sid, block[10:])
    c.data(sid, hello_body())
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.10/3", "Sends a CONTINUATION frame with 0x0 stream identifier", "PROTOCOL_ERROR (connection)", MUST)
def _case_80(c):
    _open(c)
    sid = c.new_sid()
    block = hpack_literal(c.fields(c.tag + "-bad"))
    c.headers(sid, None, end_stream=True, end_headers=False, block=block[:10])
    c.send(CONTINUATION, END_HEADERS, 0, block[10:])
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.10/4", "Sends a CONTINUATION frame preceded by a HEADERS frame with END_HEADERS flag",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_81(c):
    _open(c)
    sid = c.new_sid()
    c.headers(sid, c.fields(c.tag), end_stream=False)
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-more", "1")]))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.10/5", "Sends a CONTINUATION frame preceded by a CONTINUATION frame with END_HEADERS flag",
      "PROTOCOL_ERROR (connection)", MUST)
def _case_82(c):
    _open(c)
    sid = c.new_sid()
    block = hpack_literal(c.fields(c.tag))
    c.headers(sid, None, end_headers=False, block=block[:10])
    c.send(CONTINUATION, END_HEADERS, sid, block[10:])
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-more", "1")]))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


@case("6.10/6", "Sends a CONTINUATION frame preceded by a DATA frame", "PROTOCOL_ERROR (connection)", MUST)
def _case_83(c):
    _open(c)
    sid = _open_stream(c, c.tag)
    c.data(sid, hello_body(), end_stream=False)
    c.send(CONTINUATION, END_HEADERS, sid, hpack_literal([("x-more", "1")]))
    return expect_conn_error(c, (PROTOCOL_ERROR,))


# -- 8.1 HTTP Message Framing

@case("8.1/1", "Sends a second HEADERS frame without the END_STREAM flag", "PROTOCOL_ERROR (stream)", MUST,
      "RFC 9113 §8.1: trailers must carry END_STREAM; malformed → stream error. The request's headers and "
      "message may have been forwarded before the trailers: no upstream check")
def _case_84(c):
    _open(c)
    sid = c.new_sid()
    c.stream(sid)
    # One write: sent apart, the upstream could answer (200) before the bad
    # trailers arrive, which the case would then count against the server.
    c.send_raw(c.frame(HEADERS, END_HEADERS, sid, hpack_literal(c.fields(c.tag + "-trailers", path=STREAM_PATH))) +
               c.frame(DATA, 0, sid, expand_body(c.tag + "-trailers", count=1)) +
               c.frame(HEADERS, END_HEADERS, sid, hpack_literal([("x-trailer", "1")])))
    return expect_stream_error(c, sid, (PROTOCOL_ERROR,), malformed=True)


@case("8.1/2", "Sends trailers containing a pseudo-header field", "PROTOCOL_ERROR (stream)", MUST,
      "RFC 9113 §8.3: pseudo-header fields MUST NOT appear in a trailer section")
def _case_85(c):
    _open(c)
    sid = c.new_sid()
    c.stream(sid)
    # One write, as in 8.1/1.
    c.send_raw(c.frame(HEADERS, END_HEADERS, sid, hpack_literal(c.fields(c.tag + "-trailers", path=STREAM_PATH))) +
               c.frame(DATA, 0, sid, expand_body(c.tag + "-trailers", count=1)) +
               c.frame(HEADERS, END_HEADERS | END_STREAM, sid, hpack_literal([(":method", "POST"), ("x-trailer", "1")])))
    return expect_stream_error(c, sid, (PROTOCOL_ERROR,), malformed=True)


# -- 8.1.1 Malformed Messages: content-length

def _content_length_case(c, chunks):
    bad = c.tag + "-bad"
    sid = c.new_sid()
    c.headers(sid, c.fields(bad, path=STREAM_PATH, extra=[("content-length", "1")]))
    parts = chunks(expand_body(bad, count=1))
    for i, chunk in enumerate(parts):
        c.data(sid, chunk, end_stream=(i == len(parts) - 1))
    verdict = expect_stream_error(c, sid, (PROTOCOL_ERROR,), malformed=True)
    expect_not_forwarded(c, bad, handled_only=True)
    return verdict


@case("8.1.1/1", "Sends a HEADERS frame with content-length that does not equal the DATA frame payload length",
      "PROTOCOL_ERROR (stream)", MUST,
      "the upstream may have seen the headers (a streaming proxy), never the body: its handler must not run")
def _case_86(c):
    _open(c)
    return _content_length_case(c, lambda body: [body])


@case("8.1.1/2", "Sends a HEADERS frame with content-length that does not equal the sum of multiple DATA frames",
      "PROTOCOL_ERROR (stream)", MUST, "as 8.1.1/1")
def _case_87(c):
    _open(c)
    return _content_length_case(c, lambda body: [body[:1], body[1:]])


@case("8.1.1/3", "Sends a HEADERS frame with END_STREAM and a non-zero content-length", "PROTOCOL_ERROR (stream)",
      MUST, "the mismatch is known with the headers: nothing may reach the upstream")
def _case_88(c):
    _open(c)
    bad = c.tag + "-bad"
    sid = c.new_sid()
    c.headers(sid, c.fields(bad, path=STREAM_PATH, extra=[("content-length", "17")]), end_stream=True)
    verdict = expect_stream_error(c, sid, (PROTOCOL_ERROR,), malformed=True)
    expect_not_forwarded(c, bad)
    return verdict


# -- 8.2.1 Field Validity

@case("8.2.1/1", "Sends a HEADERS frame that contains an uppercase field name", "PROTOCOL_ERROR (stream)", MUST)
def _case_89(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("X-Upper", "1")]))


@case("8.2.1/2", "Sends a HEADERS frame with a field name containing a space", "PROTOCOL_ERROR (stream)", MUST,
      "RFC 9113 §8.2.1: names MUST NOT contain 0x00-0x20 (nghttp2 drops such a field unless told otherwise)")
def _case_90(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("x bad", "1")]))


@case("8.2.1/3", "Sends a HEADERS frame with a colon inside a regular field name", "PROTOCOL_ERROR (stream)", MUST)
def _case_91(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("x:bad", "1")]))


@case("8.2.1/4", "Sends a HEADERS frame with a field value containing NUL", "PROTOCOL_ERROR (stream)", MUST)
def _case_92(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("x-nul", "a\x00b")]))


@case("8.2.1/5", "Sends a HEADERS frame with a field value containing CR", "PROTOCOL_ERROR (stream)", MUST)
def _case_93(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("x-cr", "a\rb")]))


@case("8.2.1/6", "Sends a HEADERS frame with a field value containing LF", "PROTOCOL_ERROR (stream)", MUST)
def _case_94(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("x-lf", "a\nb")]))


@case("8.2.1/7", "Sends a HEADERS frame with a field value starting with a space", "PROTOCOL_ERROR (stream)", MUST,
      "RFC 9113 §8.2.1: a value MUST NOT start or end with SP or HTAB")
def _case_95(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("x-lead", " a")]))


@case("8.2.1/8", "Sends a HEADERS frame with a field value ending with a tab", "PROTOCOL_ERROR (stream)", MUST)
def _case_96(c):
    _open(c)
    return _malformed(c, _bad_fields(c, extra=[("x-trail", "a\t")]))


# -- 8.2.2 Connection-Specific Header Fields

def _conn_specific(name, value):
    def fn(c):
        _open(c)
        return _malformed(c, _bad_fields(c, extra=[(name, value)]))
    return fn


for _i, (_name, _value) in enumerate([("connection", "keep-alive"), ("keep-alive", "timeout=5"),
                                       ("proxy-connection", "keep-alive"), ("transfer-encoding", "chunked"),
                                       ("upgrade", "h2c")], 1):
    case("8.2.2/%d" % _i, "Sends a HEADERS frame that contains the connection-specific header field %s" % _name,
         "PROTOCOL_ERROR (stream)", MUST)(_conn_specific(_name, _value))


@case("8.2.2/6", "Sends a HEADERS frame that contains the TE header field with any value other than \"trailers\"",
      "PROTOCOL_ERROR (stream)", MUST)
def _case_97(c):
    _open(c)
    return _malformed(c, _bad_fields(c, replace={"te": "trailers, deflate"}))


# -- 8.3 Pseudo-Header Fields

@case("8.3/1", "Sends a HEADERS frame that contains a unknown pseudo-header field", "PROTOCOL_ERROR (stream)", MUST)
def _case_98(c):
    _open(c)
    return _malformed(c, [(":unknown", "x")] + _bad_fields(c))


@case("8.3/2", "Sends a HEADERS frame that contains the pseudo-header field defined for response",
      "PROTOCOL_ERROR (stream)", MUST)
def _case_99(c):
    _open(c)
    return _malformed(c, [(":status", "200")] + _bad_fields(c))


@case("8.3/3", "Sends a HEADERS frame that contains a pseudo-header field that appears after a regular header field",
      "PROTOCOL_ERROR (stream)", MUST)
def _case_100(c):
    _open(c)
    fields = _bad_fields(c)
    authority = [f for f in fields if f[0] == ":authority"]
    return _malformed(c, [f for f in fields if f[0] != ":authority"] + authority)


# -- 8.3.1 Request Pseudo-Header Fields

@case("8.3.1/1", "Sends a HEADERS frame with empty \":path\" pseudo-header field", "PROTOCOL_ERROR (stream)", MUST)
def _case_101(c):
    _open(c)
    return _malformed(c, _bad_fields(c, replace={":path": ""}))


for _i, _name in enumerate([":method", ":scheme", ":path"], 2):
    case("8.3.1/%d" % _i, "Sends a HEADERS frame that omits mandatory \"%s\" pseudo-header field" % _name,
         "PROTOCOL_ERROR (stream)", MUST)(
        (lambda name: lambda c: (_open(c), _malformed(c, _bad_fields(c, drop=(name,))))[1])(_name))

for _i, _name in enumerate([":method", ":scheme", ":path"], 5):
    case("8.3.1/%d" % _i, "Sends a HEADERS frame containing more than one \"%s\" pseudo-header field" % _name,
         "PROTOCOL_ERROR (stream)", MUST)(
        (lambda name: lambda c: (_open(c), _malformed(
            c, [(name, dict(_bad_fields(c))[name])] + _bad_fields(c)))[1])(_name))


@case("8.3.1/8", "Sends a HEADERS frame with two \":authority\" pseudo-header fields", "PROTOCOL_ERROR (stream)",
      MUST, "RFC 9113 §8.3: the same pseudo-header field name MUST NOT appear more than once")
def _case_102(c):
    _open(c)
    fields = _bad_fields(c)
    return _malformed(c, [(":authority", c.target.authority)] + fields)


# ---------------------------------------------------------------------------- running

class Result:
    def __init__(self, case, verdict, detail, seconds):
        self.case, self.verdict, self.detail, self.seconds = case, verdict, detail, seconds

    @property
    def passed(self):
        return self.verdict == PASS


_run_counter = [0]


def run_case(case, target):
    """Runs one case on a new connection; returns a Result (never raises for a
    server's behaviour)."""
    _run_counter[0] += 1
    tag = "h2c-%s-%d-%d" % (case.id.replace("/", "_").replace(".", "_"), os.getpid(), _run_counter[0])
    start = time.monotonic()
    try:
        c = Conn(target, tag)
    except OSError as e:
        return Result(case, FAIL, "cannot connect: %s" % e, 0.0)
    try:
        case.fn(c)
        verdict, detail = PASS, "ok"
    except _ConnForStream as e:
        verdict, detail = CONN_FOR_STREAM, str(e)
    except CaseFailed as e:
        verdict, detail = FAIL, str(e)
    except OSError as e:
        verdict, detail = FAIL, "%s: %s (%s)" % (e.__class__.__name__, e, c.events())
    finally:
        c.close()
    return Result(case, verdict, detail, time.monotonic() - start)


def select(patterns):
    """The cases whose id starts with one of patterns ("6.5", "8.3.1/2"), all for none."""
    if not patterns:
        return list(CASES)
    return [c for c in CASES if any(c.id == p or c.id.startswith(p.rstrip("/") + "/") or
                                    c.section.startswith(p + ".") for p in patterns)]
