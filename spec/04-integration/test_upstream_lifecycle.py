"""Upstream connection lifecycle through nuncio, and a bundled Lua module
replaced by the user's.

* An upstream that shuts down gracefully sends GOAWAY: the call in flight on
  that connection finishes, and new calls go to a new connection (here to a
  second server that took over the port).
* A module named like a bundled one, earlier on the Lua path, wins.

Run by ctest as `/usr/bin/python3 -m unittest -v test_upstream_lifecycle` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import (CALL_TIMEOUT, SETTLE_TIMEOUT, NuncioTestCase, Upstream, mapping,  # noqa: E402
                            stubs)

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc
echo, echo_grpc = S.echo_pb2, S.echo_pb2_grpc


class UpstreamGoawayTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.first = Upstream()
        cls.addClassCleanup(cls.first.stop)
        cls.start_proxy([mapping("grpc-py", "/helloworld.Greeter/", cls.first.address),
                         mapping("echo", "/echo.Echo/", cls.first.address)])

    def wait_log(self, text, timeout=SETTLE_TIMEOUT):
        deadline = time.monotonic() + timeout
        while text not in self.proxy_log():
            if time.monotonic() >= deadline:
                self.fail("the proxy never logged %r" % text)
            time.sleep(0.02)  # poll interval

    def test_goaway_drains_in_flight_and_new_calls_use_a_new_connection(self):
        with self.proxy.channel() as channel:
            greeter = hw_grpc.GreeterStub(channel)
            self.assertEqual(greeter.SayHello(hw.HelloRequest(name="warm"), timeout=CALL_TIMEOUT).message,
                             "Hello, warm!")
            self.assertEqual(self.proxy.stats()["upstream_connects"], 1)

            # A long server stream in flight on the first upstream connection.
            results = {}

            def stream():
                try:
                    replies = echo_grpc.EchoStub(channel).Expand(
                        echo.ExpandRequest(text="t", count=20, interval_ms=50), timeout=CALL_TIMEOUT)
                    results["indexes"] = [r.index for r in replies]
                except grpc.RpcError as e:
                    results["error"] = (e.code(), e.details())

            t = threading.Thread(target=stream)
            t.start()
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while "/echo.Echo/Expand" not in self.first.methods_seen():
                self.assertLess(time.monotonic(), deadline, "the stream never reached the first upstream")
                time.sleep(0.01)  # poll interval

            # A second server takes over the port; the first stops gracefully:
            # GOAWAY now, in-flight calls may finish within the grace period.
            second = Upstream(port=self.first.port)
            self.addCleanup(second.stop)
            self.first.server.stop(10)
            self.wait_log("sent GOAWAY")

            reply = greeter.SayHello(hw.HelloRequest(name="after"), timeout=CALL_TIMEOUT)
            self.assertEqual(reply.message, "Hello, after!")
            self.assertEqual(len(second.calls_to("/helloworld.Greeter/SayHello")), 1,
                             "the call after GOAWAY should reach the new server")
            self.assertEqual(self.proxy.stats()["upstream_connects"], 2)

            t.join(CALL_TIMEOUT)
            self.assertFalse(t.is_alive())
            self.assertNotIn("error", results, "the in-flight stream should finish despite GOAWAY")
            self.assertEqual(results["indexes"], list(range(20)))
        self.proxy.wait_stats(live_streams=0)


class MaxConcurrentStreamsTest(NuncioTestCase):
    """An upstream that allows 2 concurrent streams per connection: nuncio opens
    more connections instead of queueing every call on one."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream(max_concurrent_streams=2)
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address)])

    def test_more_connections_when_the_peer_allows_few_streams(self):
        with self.proxy.channel() as channel:
            stub = echo_grpc.EchoStub(channel)
            # warm up: the first connection learns the peer's SETTINGS
            self.assertEqual(stub.Echo(echo.EchoRequest(text="warm"), timeout=CALL_TIMEOUT).text, "warm")
            calls = [stub.Expand(echo.ExpandRequest(text="s", count=4, interval_ms=100), timeout=CALL_TIMEOUT)
                     for _ in range(8)]
            for call in calls:
                self.assertEqual([r.index for r in call], [0, 1, 2, 3])
        # 8 concurrent streams at 2 per connection need at least 4 connections
        self.assertGreaterEqual(self.proxy.stats()["upstream_connects"], 4)
        self.proxy.wait_stats(live_streams=0)


# The user's router, found before the bundled one: it ignores paths and picks
# the Mapping named by the x-route header (a deliberately different policy).
USER_ROUTER = r"""
local M = {}
local R = {}
R.__index = R

function M.new(model)
  local by_name = {}
  for _, r in ipairs(model.routes) do by_name[r.name] = r end
  return setmetatable({ by_name = by_name, list = model.routes }, R)
end

function R:match(req)
  local r = self.by_name[req.header("x-route") or ""]
  if r then return r end
  return nil, "no_route"
end

function R:routes() return self.list end

function M.rewrite(route, path) return path end

return M
"""


class ReplaceBundledModuleTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address)],
                        lua_files={"nuncio/router.lua": USER_ROUTER})

    def test_user_router_replaces_the_bundled_one(self):
        with self.proxy.channel() as channel:
            greeter = hw_grpc.GreeterStub(channel)
            # The bundled router would route this by its prefix; the user's
            # routes only by x-route, so without it there is no route.
            with self.assertRaises(grpc.RpcError) as cm:
                greeter.SayHello(hw.HelloRequest(name="a"), timeout=CALL_TIMEOUT)
            self.assertRpcCode(cm, grpc.StatusCode.UNIMPLEMENTED)
            reply = greeter.SayHello(hw.HelloRequest(name="b"), timeout=CALL_TIMEOUT,
                                     metadata=[("x-route", "greeter")])
            self.assertEqual(reply.message, "Hello, b!")
        self.proxy.wait_stats(live_streams=0)


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
