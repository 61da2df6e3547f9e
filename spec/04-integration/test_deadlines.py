"""The client's grpc-timeout, enforced by nuncio (beyond Envoy, which only
forwards it): when it passes, the call ends with DEADLINE_EXCEEDED and the
upstream stream is cancelled. The client here is nghttp, which does not enforce
deadlines itself, so only the proxy can end the call.

Run by ctest as `/usr/bin/python3 -m unittest -v test_deadlines` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from nuncio_fixture import CALL_TIMEOUT, NuncioTestCase, mapping, stubs  # noqa: E402

S = stubs()
echo = S.echo_pb2


def nghttp_call(port, path, message, headers):
    """A gRPC call with nghttp (length-prefixed message); returns (seconds, output)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    body = message.SerializeToString()
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(struct.pack(">BI", 0, len(body)) + body)
    args = ["nghttp", "-v", "-d", f.name, "-H", "content-type: application/grpc", "-H", "te: trailers"]
    for h in headers:
        args += ["-H", h]
    t0 = time.monotonic()
    try:
        out = subprocess.run(args + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True,
                             timeout=CALL_TIMEOUT, env=env).stdout.decode("latin-1")
    finally:
        os.unlink(f.name)
    return time.monotonic() - t0, out


class GrpcTimeoutTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        # The upstream (grpcio) enforces a grpc-timeout it is sent, and its deadline
        # races nuncio's to the millisecond; without the header only nuncio can end
        # the call, so the tests below see nuncio's deadline and nothing else.
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address,
                                 remove_request_headers=["grpc-timeout"])])

    def test_grpc_timeout_ends_a_stream_with_deadline_exceeded_and_cancels_upstream(self):
        tag = "deadline-stream"
        ended = self.up.ended_event(tag)
        secs, out = nghttp_call(self.proxy.port, "/echo.Echo/Expand",
                                echo.ExpandRequest(text="t", count=0, interval_ms=20, tag=tag),
                                ["grpc-timeout: 300m"])
        self.assertIn("grpc-status: 4", out, out[-2000:])
        self.assertIn("deadline exceeded", out)
        self.assertLess(secs, 5, "the call should end at the deadline, not when the client gives up")
        self.assertGreaterEqual(secs, 0.25)
        self.assertTrue(ended.wait(CALL_TIMEOUT), "the upstream stream should be cancelled at the deadline")
        self.proxy.wait_stats(live_streams=0)

    def test_calls_within_their_deadline_are_untouched(self):
        secs, out = nghttp_call(self.proxy.port, "/echo.Echo/Expand",
                                echo.ExpandRequest(text="t", count=3, interval_ms=10, tag="quick"),
                                ["grpc-timeout: 5S"])
        self.assertIn("grpc-status: 0", out, out[-2000:])

    def test_a_malformed_grpc_timeout_is_ignored(self):
        secs, out = nghttp_call(self.proxy.port, "/echo.Echo/Echo", echo.EchoRequest(text="x"),
                                ["grpc-timeout: soon"])
        self.assertIn("grpc-status: 0", out, out[-2000:])


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)


class StreamIdleTimeoutTest(NuncioTestCase):
    """Mapping idle_timeout_ms: a stream with no traffic either way for that long
    ends (Envoy's route idle_timeout); traffic keeps it alive past that time."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address, idle_timeout_ms=400)])

    def test_a_stream_silent_longer_than_the_idle_timeout_ends_and_cancels_upstream(self):
        import grpc
        tag = "idle-stream"
        ended = self.up.ended_event(tag)
        with self.proxy.channel() as channel:
            replies = S.echo_pb2_grpc.EchoStub(channel).Expand(
                echo.ExpandRequest(text="t", count=5, interval_ms=1500, tag=tag), timeout=CALL_TIMEOUT)
            got = []
            t0 = time.monotonic()
            with self.assertRaises(grpc.RpcError) as ctx:
                for r in replies:
                    got.append(r.index)
            secs = time.monotonic() - t0
        self.assertRpcCode(ctx, grpc.StatusCode.UNAVAILABLE, "stream idle timeout")
        self.assertEqual(got, [0], "the first message comes at once, the second after the idle timeout")
        self.assertGreaterEqual(secs, 0.35)
        self.assertLess(secs, 1.4)
        self.assertTrue(ended.wait(CALL_TIMEOUT), "the upstream stream should be cancelled")
        self.assertIn("stream idle for 400 ms", self.proxy_log())

    def test_a_stream_with_traffic_outlives_the_idle_timeout(self):
        with self.proxy.channel() as channel:
            t0 = time.monotonic()
            replies = list(S.echo_pb2_grpc.EchoStub(channel).Expand(
                echo.ExpandRequest(text="t", count=8, interval_ms=150), timeout=CALL_TIMEOUT))
            self.assertGreater(time.monotonic() - t0, 0.8)
        self.assertEqual([r.index for r in replies], list(range(8)))
