"""gRPC failure paths through nuncio: a native Lua filter that throws, and an
upstream that dies in the middle of a stream.

Run by ctest as `/usr/bin/python3 -m unittest -v test_grpc_failures` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import shutil
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import CALL_TIMEOUT, NuncioTestCase, UpstreamProcess, mapping, stubs  # noqa: E402

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc
echo, echo_grpc = S.echo_pb2, S.echo_pb2_grpc

# A native filter (lua/nuncio chain contract, docs/internals.md §5) that throws
# on demand: request header `x-boom: request` -> error in on_request_headers,
# `x-boom: response` -> error in on_response_headers. Everything else passes.
BOOM_FILTER = r"""
local M = { VERSION = "1.0" }

function M.new(config)
  local inst = { header = config.header or "x-boom" }

  function inst.on_request_headers(self, stream)
    local v = stream.request:get(self.header)
    if v == "request" then
      error("it_boom: thrown in on_request_headers on purpose")
    elseif v == "response" then
      stream.ctx.boom = true
    elseif v == "log" then
      stream.ctx.boom_log = true
    end
    stream.request:set("x-it-boom-seen", "1")
  end

  function inst.on_response_headers(self, stream)
    if stream.ctx.boom then
      error("it_boom: thrown in on_response_headers on purpose")
    end
  end

  function inst.on_log(self, stream)
    if stream.ctx.boom_log then
      error("it_boom: thrown in on_log on purpose")
    end
  end

  return inst
end

return M
"""


class FilterErrorTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("grpc-py", "/helloworld.Greeter/", cls.up.address)],
                        chain=[{"name": "it_boom", "config": {"header": "x-boom"}}],
                        lua_files={"it_boom.lua": BOOM_FILTER})

    def setUp(self):
        super().setUp()
        self.channel = self.proxy.channel()
        self.addCleanup(self.channel.close)
        self.greeter = hw_grpc.GreeterStub(self.channel)

    def say_hello(self, name, *metadata):
        test_id = uuid.uuid4().hex
        reply = self.greeter.SayHello(hw.HelloRequest(name=name), timeout=CALL_TIMEOUT,
                                      metadata=[("x-test-id", test_id)] + list(metadata))
        return reply, test_id

    def upstream_saw(self, test_id):
        return [md for md in self.up.calls_to("/helloworld.Greeter/SayHello") if md.get("x-test-id") == test_id]

    def test_filter_runs_on_normal_calls(self):
        reply, test_id = self.say_hello("plain")
        self.assertEqual(reply.message, "Hello, plain!")
        seen = self.upstream_saw(test_id)
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0].get("x-it-boom-seen"), "1", "the chain filter should have set a request header")

    def test_throw_in_request_headers_is_internal_then_next_call_works(self):
        test_id = uuid.uuid4().hex
        with self.assertRaises(grpc.RpcError) as cm:
            self.greeter.SayHello(hw.HelloRequest(name="boom"), timeout=CALL_TIMEOUT,
                                  metadata=[("x-test-id", test_id), ("x-boom", "request")])
        err = self.assertRpcCode(cm, grpc.StatusCode.INTERNAL)
        self.assertTrue(err.details(), "the grpc-message should say why")
        self.assertEqual(self.upstream_saw(test_id), [], "a request whose filter threw must not be proxied")
        self.assertIn("thrown in on_request_headers on purpose", self.proxy_log(),
                      "the filter error should be logged")
        # Only that request failed: the same connection and a new one keep working.
        reply, _ = self.say_hello("after")
        self.assertEqual(reply.message, "Hello, after!")
        with self.proxy.channel() as fresh:
            self.assertEqual(hw_grpc.GreeterStub(fresh).SayHello(hw.HelloRequest(name="fresh"),
                                                                 timeout=CALL_TIMEOUT).message, "Hello, fresh!")
        self.proxy.wait_stats(live_streams=0)

    def test_throw_in_response_headers_is_internal_then_next_call_works(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.say_hello("boom", ("x-boom", "response"))
        self.assertRpcCode(cm, grpc.StatusCode.INTERNAL)
        self.assertIn("thrown in on_response_headers on purpose", self.proxy_log())
        reply, _ = self.say_hello("after")
        self.assertEqual(reply.message, "Hello, after!")
        self.proxy.wait_stats(live_streams=0)

    def test_throw_in_log_is_logged_and_the_call_still_succeeds(self):
        # The response was already sent when on_log runs: the error is logged
        # with the filter's name, the call is not affected.
        reply, _ = self.say_hello("logged", ("x-boom", "log"))
        self.assertEqual(reply.message, "Hello, logged!")
        self.proxy.wait_stats(live_streams=0)
        self.assertIn("filter it_boom: on_log failed", self.proxy_log())
        self.assertIn("thrown in on_log on purpose", self.proxy_log())


class UpstreamDiesMidStreamTest(NuncioTestCase):
    """Two ways an upstream dies while a server stream is open:
    * stopped: the grpc server stops itself in the handler (server.stop(None):
      every call cancelled, GOAWAY, connections closed);
    * killed: the upstream process gets SIGKILL, so the connection just ends
      with nothing more from the upstream (no trailers, no GOAWAY)."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        log_dir = tempfile.mkdtemp(prefix="nuncio-it-upstream-")
        cls.addClassCleanup(shutil.rmtree, log_dir, True)
        cls.up_proc = UpstreamProcess(os.path.join(log_dir, "upstream.log"))
        cls.addClassCleanup(cls.up_proc.stop)
        cls.start_proxy([mapping("echo-stops", "/stops.Echo/", cls.up.address, rewrite="/echo.Echo/"),
                         mapping("echo-killed", "/killed.Echo/", cls.up_proc.address, rewrite="/echo.Echo/")])

    def stream_until_error(self, channel, service, request, on_reply=None):
        """Runs Expand on /<service>/Expand; returns (indexes received, code, details)."""
        expand = channel.unary_stream("/%s/Expand" % service,
                                      request_serializer=echo.ExpandRequest.SerializeToString,
                                      response_deserializer=echo.EchoReply.FromString)
        received, code, details = [], None, None
        try:
            for reply in expand(request, timeout=CALL_TIMEOUT):
                received.append(reply.index)
                if on_reply:
                    on_reply(len(received))
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        self.assertIsNotNone(code, "the stream ended with OK after %s although the upstream died" % received)
        # Replies already sent may or may not cross before the end; none may be
        # invented or reordered.
        self.assertEqual(received, list(range(len(received))))
        return received, code, details

    def echo_at(self, channel, service, text):
        call = channel.unary_unary("/%s/Echo" % service, request_serializer=echo.EchoRequest.SerializeToString,
                                   response_deserializer=echo.EchoReply.FromString)
        return call(echo.EchoRequest(text=text), timeout=CALL_TIMEOUT)

    def assert_gone_for_good(self, channel, service):
        self.proxy.wait_stats(live_streams=0)
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo_at(channel, service, "later")
        self.assertRpcCode(cm, grpc.StatusCode.UNAVAILABLE)
        status, body = self.proxy.admin_get("/ready")
        self.assertEqual((status, body.strip()), (200, "LIVE"))

    def test_upstream_stops_mid_stream(self):
        with self.proxy.channel() as channel:
            # A warm-up call: the upstream connection exists before the stream.
            self.assertEqual(self.echo_at(channel, "stops.Echo", "warm").text, "warm")
            received, code, details = self.stream_until_error(
                channel, "stops.Echo", echo.ExpandRequest(text="tick", count=0, interval_ms=50, die_after=5))
            self.assertTrue(self.up.died.is_set(), "the upstream should have stopped itself")
            self.assertLessEqual(len(received), 5)
            # grpc's server.stop() cancels the call by sending trailers itself
            # (grpc-status 14, "Cancelling all calls"), so this is the upstream's
            # own status passed through; the killed case below is the proxy's.
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE,
                             "got %s (%r) after %d replies" % (code, details, len(received)))
            self.assert_gone_for_good(channel, "stops.Echo")

    def test_upstream_killed_mid_stream(self):
        with self.proxy.channel() as channel:
            self.assertEqual(self.echo_at(channel, "killed.Echo", "warm").text, "warm")

            def kill_after_five(n):
                if n == 5:
                    self.up_proc.kill()

            received, code, details = self.stream_until_error(
                channel, "killed.Echo", echo.ExpandRequest(text="tick", count=0, interval_ms=20),
                on_reply=kill_after_five)
            self.assertGreaterEqual(len(received), 5)
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE,
                             "got %s (%r) after %d replies" % (code, details, len(received)))
            self.assertIn("upstream", details or "", "the grpc-message should say the upstream went away")
            self.assert_gone_for_good(channel, "killed.Echo")


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
