"""Filters that wait for a whole body (stream:read_body()) through the real proxy:
the phase's coroutine yields, the proxy keeps serving, and the held body is
forwarded once the filter is done. Over the buffer limit the call gets 413.

Run by ctest as `/usr/bin/python3 -m unittest -v test_body_filters` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import queue
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import CALL_TIMEOUT, GRPC_MSG_OPTIONS, NuncioTestCase, mapping, stubs  # noqa: E402

S = stubs()
echo, echo_grpc = S.echo_pb2, S.echo_pb2_grpc


class HeldCollect:
    """A client-streaming Collect call whose body stays open until finish():
    send() adds a message; finish() ends the body and returns the reply (or
    raises the call's error)."""

    def __init__(self, stub, metadata):
        self.q = queue.Queue()
        self.result = {}

        def requests():
            while True:
                item = self.q.get()
                if item is None:
                    return
                yield item

        def run():
            try:
                self.result["reply"] = stub.Collect(requests(), timeout=CALL_TIMEOUT, metadata=metadata)
            except grpc.RpcError as e:
                self.result["error"] = e
        self.thread = threading.Thread(target=run)
        self.thread.start()

    def send(self, text):
        self.q.put(echo.EchoRequest(text=text))

    def finish(self):
        self.q.put(None)
        self.thread.join(CALL_TIMEOUT)
        if self.thread.is_alive():
            raise AssertionError("the Collect call did not end within %ss" % CALL_TIMEOUT)
        if "error" in self.result:
            raise self.result["error"]
        return self.result["reply"]

# Reads the whole request body before routing; refuses bodies containing
# "forbidden"; records sizes in headers the upstream / client can see.
BODY_FILTER = r"""
return {
  new = function()
    return {
      on_request_headers = function(_, s)
        if not s.request:get("x-read-body") then return end
        local body = assert(s:read_body())
        if body:find("forbidden", 1, true) then
          return s:respond(403, "body refused by filter")
        end
        s.request:set("x-body-bytes", #body)
      end,
      on_response_headers = function(_, s)
        if not s.ctx.read_response and s.request:get("x-read-response") then
          local body = assert(s:read_body())
          s.response:set("x-response-body-bytes", #body)
        end
      end,
    }
  end,
}
"""


class BodyFilterTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address)],
                        chain=[{"name": "it_body"}], lua_files={"it_body.lua": BODY_FILTER})

    def setUp(self):
        super().setUp()
        self.channel = self.proxy.channel(GRPC_MSG_OPTIONS)
        self.addCleanup(self.channel.close)
        self.stub = echo_grpc.EchoStub(self.channel)

    def test_client_stream_is_held_then_forwarded_whole(self):
        texts = ["part%d" % i for i in range(40)]
        call = self.stub.Collect.with_call(iter([echo.EchoRequest(text=t) for t in texts]), timeout=CALL_TIMEOUT,
                                           metadata=[("x-read-body", "1")])
        reply = call[0]
        self.assertEqual(reply.text, ",".join(texts))
        self.assertEqual(reply.index, 40)
        seen = self.up.calls_to("/echo.Echo/Collect")[-1]
        self.assertTrue(int(seen["x-body-bytes"]) > 40 * 5, seen)

    def test_filter_refuses_on_body_content(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Echo(echo.EchoRequest(text="a forbidden word"), timeout=CALL_TIMEOUT,
                           metadata=[("x-read-body", "1")])
        self.assertRpcCode(cm, grpc.StatusCode.PERMISSION_DENIED, "body refused by filter")
        self.assertEqual(self.stub.Echo(echo.EchoRequest(text="fine"), timeout=CALL_TIMEOUT,
                                        metadata=[("x-read-body", "1")]).text, "fine")
        self.proxy.wait_stats(live_streams=0)

    def test_response_body_is_held_until_the_end(self):
        replies, call = [], self.stub.Expand(echo.ExpandRequest(text="t", count=10), timeout=CALL_TIMEOUT,
                                             metadata=[("x-read-response", "1")])
        for r in call:
            replies.append(r.index)
        self.assertEqual(replies, list(range(10)))
        md = dict(call.initial_metadata())
        self.assertTrue(int(md["x-response-body-bytes"]) > 10 * 5, md)

    def test_body_over_the_buffer_limit_gets_413(self):
        big = b"x" * (1536 * 1024)
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Echo(echo.EchoRequest(text="big", payload=big), timeout=CALL_TIMEOUT,
                           metadata=[("x-read-body", "1")])
        # 413 has no gRPC mapping in Envoy's table: UNKNOWN, with the reason.
        self.assertRpcCode(cm, grpc.StatusCode.UNKNOWN, "Payload Too Large")
        self.assertEqual(self.stub.Echo(echo.EchoRequest(text="after"), timeout=CALL_TIMEOUT).text, "after")
        self.proxy.wait_stats(live_streams=0)

    def test_other_calls_are_served_while_a_filter_waits(self):
        # A client stream whose body never ends while a filter waits for it:
        # unary calls on the same connection go on.
        held = HeldCollect(self.stub, [("x-read-body", "1")])
        held.send("first")
        self.assertEqual(self.stub.Echo(echo.EchoRequest(text="meanwhile"), timeout=CALL_TIMEOUT).text, "meanwhile")
        held.send("second")
        self.assertEqual(held.finish().text, "first,second")
        self.proxy.wait_stats(live_streams=0)


# An Envoy script proved to end and to keep nothing of a call (bounded.confined):
# envoy_scripts reuses its handle and header map object from call to call. A
# call waiting in body() holds its own while other calls run, and each call's
# objects must act on that call's stream only.
CONFINED_SCRIPT = """function envoy_on_request(request_handle)
  local tag = request_handle:headers():get("x-tag") or "none"
  if request_handle:headers():get("x-read-body") ~= nil then
    local n = request_handle:body():length()
    request_handle:headers():add("x-body-bytes", tostring(n))
  end
  request_handle:headers():add("x-saw", tag)
end
"""


class ConfinedScriptTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address)],
                        docs=[{"apiVersion": "getambassador.io/v3alpha1", "kind": "Module",
                               "metadata": {"name": "ambassador"},
                               "spec": {"config": {"lua_scripts": CONFINED_SCRIPT}}}],
                        native={"log_level": "debug"})

    def test_the_script_reuses_its_objects_and_each_call_sees_its_own_stream(self):
        self.assertIn("envoy_on_request keeps nothing of a call: its handle objects are reused", self.proxy.log(0))
        channel = self.proxy.channel(GRPC_MSG_OPTIONS)
        self.addCleanup(channel.close)
        stub = echo_grpc.EchoStub(channel)
        held = HeldCollect(stub, [("x-read-body", "1"), ("x-tag", "waiting")])
        held.send("first")
        # While that call waits in body(), others run the script, some at once.
        for i in range(20):
            self.assertEqual(stub.Echo(echo.EchoRequest(text="u%d" % i), timeout=CALL_TIMEOUT,
                                       metadata=[("x-tag", "u%d" % i)]).text, "u%d" % i)
        futures = [stub.Echo.future(echo.EchoRequest(text="f%d" % i), timeout=CALL_TIMEOUT,
                                    metadata=[("x-tag", "f%d" % i)]) for i in range(30)]
        self.assertEqual([f.result().text for f in futures], ["f%d" % i for i in range(30)])
        held.send("second")
        self.assertEqual(held.finish().text, "first,second")
        seen = {md["x-saw"]: md for md in self.up.calls_to("/echo.Echo/Echo")}
        self.assertEqual(sorted(seen), sorted(["u%d" % i for i in range(20)] + ["f%d" % i for i in range(30)]))
        for tag, md in seen.items():
            self.assertEqual(md["x-tag"], tag)
            self.assertNotIn("x-body-bytes", md)
        collected = self.up.calls_to("/echo.Echo/Collect")[-1]
        self.assertEqual(collected["x-saw"], "waiting")
        self.assertTrue(int(collected["x-body-bytes"]) > 10, collected)
        self.assertNotIn("script log", self.proxy_log())
        self.proxy.wait_stats(live_streams=0)


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
