"""gRPC through nuncio: the four call shapes, big messages, rewrite, local replies,
cancellation, one upstream connection for many concurrent calls (also with batched polls).

Run by ctest as `/usr/bin/python3 -m unittest -v test_grpc` in spec/04-integration
with NUNCIO_BIN / NUNCIO_SRC (and NUNCIO_SANITIZE=1 under ASan) set.
"""
import hashlib
import os
import queue
import socket
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import (CALL_TIMEOUT, GRPC_MSG_OPTIONS, SETTLE_TIMEOUT, MiB, NuncioTestCase,  # noqa: E402
                            Greeter, mapping, stubs)

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc
echo, echo_grpc = S.echo_pb2, S.echo_pb2_grpc

_END = object()


def queue_iter(q):
    """Request iterator fed by a queue: lets a test send one message at a time."""
    while True:
        item = q.get()
        if item is _END:
            return
        yield item


def say_hello_at(channel, path):
    """A unary HelloRequest -> HelloReply call on an arbitrary method path."""
    return channel.unary_unary(path, request_serializer=hw.HelloRequest.SerializeToString,
                               response_deserializer=hw.HelloReply.FromString)


class GrpcThroughProxyTest(NuncioTestCase):
    """One upstream (Greeter + Echo) behind one proxy with four Mappings."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        # A port bound but never listening: connecting to it is refused, and
        # nothing else can take it while the class runs.
        cls.dead = socket.socket()
        cls.dead.bind(("127.0.0.1", 0))
        cls.addClassCleanup(cls.dead.close)
        dead_service = "127.0.0.1:%d" % cls.dead.getsockname()[1]
        cls.start_proxy([
            mapping("grpc-py", "/helloworld.Greeter/", cls.up.address),
            mapping("grpc-alias", "/alias.Greeter/", cls.up.address, rewrite="/helloworld.Greeter/"),
            mapping("echo", "/echo.Echo/", cls.up.address),
            mapping("dead", "/dead.Greeter/", dead_service, rewrite="/helloworld.Greeter/"),
        ])

    def setUp(self):
        super().setUp()
        self.channel = self.proxy.channel(GRPC_MSG_OPTIONS)
        self.addCleanup(self.channel.close)
        self.greeter = hw_grpc.GreeterStub(self.channel)
        self.echo = echo_grpc.EchoStub(self.channel)

    # ------------------------------------------------------------ call shapes

    def test_unary_say_hello(self):
        test_id = uuid.uuid4().hex
        reply, call = self.greeter.SayHello.with_call(hw.HelloRequest(name="nuncio"), timeout=CALL_TIMEOUT,
                                                      metadata=[("x-test-id", test_id)])
        self.assertEqual(reply.message, "Hello, nuncio!")
        # Envoy's connection manager writes `server` (Emissary's default server_name).
        self.assertEqual(dict(call.initial_metadata()).get("server"), "envoy")
        seen = [md for md in self.up.calls_to("/helloworld.Greeter/SayHello") if md.get("x-test-id") == test_id]
        self.assertEqual(len(seen), 1, "the upstream should see the call once, with its metadata")

    def test_server_streaming_50_replies(self):
        replies = list(self.greeter.SayHelloStreamReply(hw.HelloRequest(name="stream"), timeout=CALL_TIMEOUT))
        expected = ["Hello %d, stream!" % i for i in range(Greeter.STREAM_REPLIES)]
        self.assertEqual(Greeter.STREAM_REPLIES, 50)
        self.assertEqual([r.message for r in replies], expected)

    def test_client_streaming_collect(self):
        texts = ["m%d" % i for i in range(100)]
        reply = self.echo.Collect(iter([echo.EchoRequest(text=t) for t in texts]), timeout=CALL_TIMEOUT)
        self.assertEqual(reply.index, 100)
        self.assertEqual(reply.text, ",".join(texts))

    def test_bidi_lockstep(self):
        # Each reply is awaited before the next request is sent, so this only
        # passes if the proxy forwards DATA both ways while the stream is open.
        q = queue.Queue()
        replies = self.greeter.SayHelloBidiStream(queue_iter(q), timeout=CALL_TIMEOUT)
        for i in range(20):
            q.put(hw.HelloRequest(name="b%d" % i))
            self.assertEqual(next(replies).message, "Hello, b%d!" % i)
        q.put(_END)
        self.assertEqual(list(replies), [], "the stream should end cleanly after the client half-closes")
        self.assertEqual(replies.code(), grpc.StatusCode.OK)

    def test_large_messages_4mib_each_way(self):
        payload = os.urandom(4 * MiB)
        reply = self.echo.Echo(echo.EchoRequest(text="big", payload=payload), timeout=CALL_TIMEOUT)
        self.assertEqual(reply.text, "big")
        self.assertEqual(len(reply.payload), len(payload))
        self.assertEqual(hashlib.sha256(reply.payload).hexdigest(), hashlib.sha256(payload).hexdigest(),
                         "the 4 MiB payload came back altered")

    def test_upstream_status_and_metadata_pass_through(self):
        # An upstream's own gRPC status is passed through untouched (behaviour
        # notes §7.2), with its response headers and trailers.
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.Echo(echo.EchoRequest(text="status:7:no entry for you"), timeout=CALL_TIMEOUT)
        err = self.assertRpcCode(cm, grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(err.details(), "no entry for you")
        self.assertIn(("x-it-header", "h1"), list(err.initial_metadata()))
        self.assertIn(("x-it-trailer", "t1"), list(err.trailing_metadata()))

    # ------------------------------------------------------------ routing

    def test_rewrite_alias_path(self):
        test_id = uuid.uuid4().hex
        reply = say_hello_at(self.channel, "/alias.Greeter/SayHello")(
            hw.HelloRequest(name="alias"), timeout=CALL_TIMEOUT, metadata=[("x-test-id", test_id)])
        self.assertEqual(reply.message, "Hello, alias!")
        seen = [md for md in self.up.calls_to("/helloworld.Greeter/SayHello") if md.get("x-test-id") == test_id]
        self.assertEqual(len(seen), 1, "the upstream should see /helloworld.Greeter/SayHello; it saw %s"
                         % self.up.methods_seen())
        self.assertEqual(seen[0].get("x-envoy-original-path"), "/alias.Greeter/SayHello")
        self.assertNotIn("/alias.Greeter/SayHello", self.up.methods_seen())

    def test_unrouted_method_is_unimplemented(self):
        for path in ("/nowhere.Service/Method", "/helloworld.Nowhere/SayHello"):
            with self.subTest(path=path):
                with self.assertRaises(grpc.RpcError) as cm:
                    say_hello_at(self.channel, path)(hw.HelloRequest(name="x"), timeout=CALL_TIMEOUT)
                # Envoy leaves grpc-message empty here; nuncio names the path.
                self.assertRpcCode(cm, grpc.StatusCode.UNIMPLEMENTED, details_contains=path)
                self.assertNotIn(path, self.up.methods_seen(), "an unrouted call must not reach the upstream")

    def test_stopped_upstream_is_unavailable(self):
        with self.assertRaises(grpc.RpcError) as cm:
            say_hello_at(self.channel, "/dead.Greeter/SayHello")(hw.HelloRequest(name="x"), timeout=CALL_TIMEOUT)
        self.assertRpcCode(cm, grpc.StatusCode.UNAVAILABLE, details_contains="upstream connect error")
        # The proxy itself keeps serving.
        self.assertEqual(self.greeter.SayHello(hw.HelloRequest(name="after"), timeout=CALL_TIMEOUT).message,
                         "Hello, after!")

    # ------------------------------------------------------------ cancellation

    def test_client_cancels_server_stream(self):
        tag = "cancel-expand-" + uuid.uuid4().hex
        # count=0: the server streams until the RPC ends, so only a cancellation
        # that reaches the upstream can set the event.
        call = self.echo.Expand(echo.ExpandRequest(text="tick", count=0, interval_ms=20, tag=tag),
                                timeout=CALL_TIMEOUT)
        for i in range(3):
            self.assertEqual(next(call).index, i)
        self.assertTrue(call.cancel())
        with self.assertRaises(grpc.RpcError) as cm:
            for _ in call:
                pass
        self.assertRpcCode(cm, grpc.StatusCode.CANCELLED)
        self.assertTrue(self.up.ended_event(tag).wait(SETTLE_TIMEOUT),
                        "the upstream never saw the server-streaming call end after the client cancelled")
        self.proxy.wait_stats(live_streams=0)

    def test_client_cancels_bidi_stream(self):
        tag = "cancel-chat-" + uuid.uuid4().hex
        q = queue.Queue()
        call = self.echo.Chat(queue_iter(q), timeout=CALL_TIMEOUT)
        self.addCleanup(q.put, _END)
        for i in range(2):
            q.put(echo.EchoRequest(text="c%d" % i, tag=tag))
            self.assertEqual(next(call).text, "c%d" % i)
        self.assertTrue(call.cancel())
        self.assertTrue(self.up.ended_event(tag).wait(SETTLE_TIMEOUT),
                        "the upstream never saw the bidi call end after the client cancelled")
        self.proxy.wait_stats(live_streams=0)


class ConcurrentCallsTest(NuncioTestCase):
    """A fresh proxy, so upstream_connects counts only this test's connections."""

    CALLS = 200

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream(workers=16)
        cls.start_proxy([mapping("grpc-py", "/helloworld.Greeter/", cls.up.address)])

    def test_200_concurrent_calls_share_one_upstream_connection(self):
        self.assertEqual(self.proxy.stats().get("upstream_connects"), 0, "no upstream connection before any call")
        with self.proxy.channel() as channel:
            stub = hw_grpc.GreeterStub(channel)
            calls = [stub.SayHello.future(hw.HelloRequest(name="c%d" % i), timeout=CALL_TIMEOUT)
                     for i in range(self.CALLS)]
            failures, wrong = [], []
            for i, f in enumerate(calls):
                try:
                    if f.result().message != "Hello, c%d!" % i:
                        wrong.append(i)
                except grpc.RpcError as e:
                    failures.append((i, e.code(), e.details()))
        self.assertEqual(failures, [], "%d of %d calls failed" % (len(failures), self.CALLS))
        self.assertEqual(wrong, [], "calls got another call's reply")
        self.assertEqual(len(self.up.calls_to("/helloworld.Greeter/SayHello")), self.CALLS)
        stats = self.proxy.wait_stats(live_streams=0)
        self.assertEqual(stats.get("upstream_connects"), 1,
                         "one upstream HTTP/2 connection should carry all %d calls: %s" % (self.CALLS, stats))
        self.assertEqual(len(self.up.peers), 1, "the upstream saw the calls from %s" % sorted(self.up.peers))


class BatchedPollsTest(ConcurrentCallsTest):
    """io_batch_us at its largest (1 ms): with 200 calls in flight every poll of the worker
    is batched; each call still gets its own reply, and a call made alone afterwards (below
    the in-flight threshold, so polls are not delayed) still works. Bulk bodies batch too."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream(workers=16)
        cls.start_proxy([mapping("grpc-py", "/helloworld.Greeter/", cls.up.address),
                         mapping("echo", "/echo.Echo/", cls.up.address)], native={"io_batch_us": 1000})

    def test_lone_call_after_the_burst(self):
        with self.proxy.channel() as channel:
            reply = hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name="alone"), timeout=CALL_TIMEOUT)
        self.assertEqual(reply.message, "Hello, alone!")

    def test_bulk_bodies_both_ways_while_polls_are_batched(self):
        # Large bodies make the worker busy by themselves (bulk turns): four
        # 4 MiB echoes at once, each read in 1 ms batches, come back intact.
        payloads = [os.urandom(4 * MiB) for _ in range(4)]
        with self.proxy.channel(GRPC_MSG_OPTIONS) as channel:
            stub = echo_grpc.EchoStub(channel)
            futures = [stub.Echo.future(echo.EchoRequest(text="bulk%d" % i, payload=p), timeout=CALL_TIMEOUT)
                       for i, p in enumerate(payloads)]
            for i, (f, p) in enumerate(zip(futures, payloads)):
                reply = f.result()
                self.assertEqual(reply.text, "bulk%d" % i)
                self.assertEqual(hashlib.sha256(reply.payload).digest(), hashlib.sha256(p).digest())
            reply = hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name="after"), timeout=CALL_TIMEOUT)
        self.assertEqual(reply.message, "Hello, after!")


HOP_FILTER = r"""
return {
  new = function()
    return {
      on_request_headers = function(_, s)
        s.request:set("connection", "close")
        s.request:set("upgrade", "h2c")
        s.request:set("keep-alive", "timeout=5")
        s.request:set("x-added", "kept")
      end,
      on_response_headers = function(_, s)
        s.response:set("transfer-encoding", "chunked")
        s.response:set("proxy-connection", "keep-alive")
        s.response:set("x-response-added", "kept")
      end,
    }
  end,
}
"""


class HopByHopHeadersTest(NuncioTestCase):
    """Connection-specific headers a filter adds never leave nuncio: HTTP/2 peers
    would treat the message as malformed (RFC 9113 §8.2.2)."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("grpc-py", "/helloworld.Greeter/", cls.up.address)],
                        chain=[{"name": "it_hop"}], lua_files={"it_hop.lua": HOP_FILTER})

    def test_filter_added_hop_by_hop_headers_are_dropped_both_ways(self):
        with self.proxy.channel() as channel:
            reply, call = hw_grpc.GreeterStub(channel).SayHello.with_call(hw.HelloRequest(name="hop"),
                                                                            timeout=CALL_TIMEOUT)
        self.assertEqual(reply.message, "Hello, hop!")
        md = self.up.calls_to("/helloworld.Greeter/SayHello")[-1]
        self.assertEqual(md.get("x-added"), "kept")
        for name in ("connection", "upgrade", "keep-alive"):
            self.assertNotIn(name, md)
        initial = dict(call.initial_metadata())
        self.assertEqual(initial.get("x-response-added"), "kept")
        self.assertNotIn("transfer-encoding", initial)
        self.assertNotIn("proxy-connection", initial)


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
