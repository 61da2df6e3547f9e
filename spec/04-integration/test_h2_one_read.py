"""Many requests in one read (issue 7): nuncio decodes a whole read from a
client before it reports the requests in it to their streams (csrc/h2s.c,
report_all), so that their filter chains run back to back. What a stream was
told must not change for it: its headers, body pieces and end, in order, and
before its close. Each case sends all its frames with one write over a raw
HTTP/2 connection (spec/helpers/h2conformance.py), so they arrive in one read,
and checks what the real grpcio upstream answered on every stream.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from h2conformance import (CANCEL, DATA, END_HEADERS, END_STREAM, HEADERS, RST_STREAM, TIMEOUT, Conn,  # noqa: E402
                           FixtureUpstream, Target, hello_body, hpack_literal)
from nuncio_fixture import NuncioTestCase, mapping  # noqa: E402


def hello_reply(data):
    """The name in a gRPC-framed helloworld.HelloReply ("Hello, <name>!"), or None."""
    data = bytes(data)
    if len(data) < 7 or data[0] != 0 or int.from_bytes(data[1:5], "big") != len(data) - 5 or data[5] != 0x0a:
        return None
    n, i = 0, 6
    shift = 0
    while True:
        b = data[i]
        n |= (b & 0x7f) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            break
    return data[i:i + n].decode()


class OneReadTest(NuncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("one-read", "/", cls.up.address)])

    def conn(self):
        c = Conn(Target("127.0.0.1", self.proxy.port, upstream=FixtureUpstream(self.up)), "one-read")
        self.addCleanup(c.close)
        return c.handshake()

    def request(self, c, sid, tag, end_stream=False):
        return Conn.frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid,
                          hpack_literal(c.fields(tag)))

    def assert_hello(self, c, sid, name):
        st = c.streams[sid]
        self.assertEqual(st.status, "200", st.describe())
        self.assertEqual(st.header("grpc-status", -1), "0", st.describe())
        self.assertEqual(hello_reply(st.data), "Hello, %s!" % name, st.describe())

    def test_thirty_calls_in_one_write_each_get_their_own_answer(self):
        c = self.conn()
        wire, names = bytearray(), {}
        for i in range(30):
            sid = c.new_sid()
            c.stream(sid)
            names[sid] = "call-%02d-%s" % (i, "x" * i)  # bodies of different lengths
            wire += self.request(c, sid, "thirty")
            wire += Conn.frame(DATA, END_STREAM, sid, hello_body(names[sid]))
        c.send_raw(bytes(wire))
        c.read_until(lambda: all(c.streams[s].ended or c.streams[s].reset is not None for s in names),
                     timeout=TIMEOUT * 3, what="thirty answers")
        for sid, name in names.items():
            self.assert_hello(c, sid, name)
        self.assertTrue(self.proxy.running())

    def test_bodies_split_and_interleaved_between_streams(self):
        c = self.conn()
        a, b = c.new_sid(), c.new_sid()
        c.stream(a)
        c.stream(b)
        body_a, body_b = hello_body("alpha-" + "a" * 300), hello_body("beta")
        wire = (self.request(c, a, "split") + Conn.frame(DATA, 0, a, body_a[:7]) +
                self.request(c, b, "split") + Conn.frame(DATA, 0, b, body_b[:3]) +
                Conn.frame(DATA, 0, a, body_a[7:100]) + Conn.frame(DATA, END_STREAM, b, body_b[3:]) +
                Conn.frame(DATA, 0, a, b"") + Conn.frame(DATA, END_STREAM, a, body_a[100:]))
        c.send_raw(wire)
        c.read_until(lambda: c.streams[a].ended and c.streams[b].ended, what="both answers")
        self.assert_hello(c, a, "alpha-" + "a" * 300)
        self.assert_hello(c, b, "beta")

    def test_request_trailers_end_the_request(self):
        c = self.conn()
        sid = c.new_sid()
        c.stream(sid)
        wire = (self.request(c, sid, "trailers") + Conn.frame(DATA, 0, sid, hello_body("with-trailers")) +
                Conn.frame(HEADERS, END_HEADERS | END_STREAM, sid, hpack_literal([("x-trailer", "1")])))
        c.send_raw(wire)
        c.read_until(lambda: c.streams[sid].ended or c.streams[sid].reset is not None, what="the answer")
        self.assert_hello(c, sid, "with-trailers")

    def test_headers_only_request_with_end_stream(self):
        # END_STREAM on HEADERS: the request is complete without a body; the
        # upstream (grpcio) answers a call without a message with an error
        # status, not a hang: the proxy passed the end on.
        c = self.conn()
        sid = c.new_sid()
        c.stream(sid)
        c.send_raw(self.request(c, sid, "no-body", end_stream=True))
        c.read_until(lambda: c.streams[sid].ended or c.streams[sid].reset is not None, what="the answer")
        st = c.streams[sid]
        self.assertEqual(st.status, "200", st.describe())
        self.assertNotEqual(st.header("grpc-status", -1), "0", st.describe())
        self.assertIsNotNone(st.header("grpc-status", -1), st.describe())

    def test_a_call_reset_in_the_same_read_leaves_the_others_alone(self):
        c = self.conn()
        gone, kept = c.new_sid(), c.new_sid()
        c.stream(gone)
        c.stream(kept)
        wire = (self.request(c, gone, "reset") + Conn.frame(DATA, 0, gone, hello_body("gone")[:4]) +
                Conn.frame(RST_STREAM, 0, gone, CANCEL.to_bytes(4, "big")) +
                self.request(c, kept, "reset") + Conn.frame(DATA, END_STREAM, kept, hello_body("kept")))
        c.send_raw(wire)
        c.read_until(lambda: c.streams[kept].ended, what="the answer on the stream not reset")
        self.assert_hello(c, kept, "kept")
        self.assertEqual(c.streams[gone].data, bytearray(), c.streams[gone].describe())
        self.assertIsNone(c.goaway, c.events())
        # and the connection goes on
        again = c.unary("reset-after")
        c.read_until(lambda: c.streams[again].ended, what="a later call's answer")
        self.assert_hello(c, again, "conformance")
        self.assertTrue(self.proxy.running())


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
