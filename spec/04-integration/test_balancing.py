"""Endpoints, balancing, passive health, retries and connect backoff (issue 5).

Several real grpcio servers stand behind one Mapping, listed as the service's
endpoints in the native config (`endpoints:`), the way a Kubernetes endpoint
resolver would give them. Each server counts the calls it gets and can be told
to fail with UNAVAILABLE or to answer slowly, so every assertion is about what
reached which server.
"""
import os
import sys
import threading
import time
import unittest
from concurrent import futures

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))
from nuncio_fixture import (CALL_TIMEOUT, GRPC_MSG_OPTIONS, SETTLE_TIMEOUT, SLOW, NuncioTestCase,  # noqa: E402
                            free_port, mapping, stubs)

hw = stubs().helloworld_pb2
hw_grpc = stubs().helloworld_pb2_grpc
echo = stubs().echo_pb2
echo_grpc = stubs().echo_pb2_grpc


class Server:
    """A grpcio server with Greeter.SayHello and Echo.Collect that answers with its
    own name. mode: "ok", "unavailable" (fails every call), or "slow" (answers after
    `delay` seconds)."""

    def __init__(self, name, port=0):
        self.name = name
        self.mode = "ok"
        self.delay = 0.0
        self.lock = threading.Lock()
        self.calls = 0
        self.collected = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=GRPC_MSG_OPTIONS)
        outer = self

        class Greeter(hw_grpc.GreeterServicer):
            def SayHello(self, request, context):
                return outer._answer(context, lambda: hw.HelloReply(message="%s:%s" % (outer.name, request.name)))

        class Echo(echo_grpc.EchoServicer):
            def Collect(self, request_iterator, context):
                texts = [r.text for r in request_iterator]
                with outer.lock:
                    outer.collected.append(texts)
                return outer._answer(context, lambda: echo.EchoReply(text=outer.name + ":" + ",".join(texts)))

        hw_grpc.add_GreeterServicer_to_server(Greeter(), self.server)
        echo_grpc.add_EchoServicer_to_server(Echo(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:%d" % port)
        if not self.port:
            raise RuntimeError("cannot bind 127.0.0.1:%d" % port)
        self.server.start()
        self.address = "127.0.0.1:%d" % self.port

    def _answer(self, context, reply):
        with self.lock:
            self.calls += 1
            mode, delay = self.mode, self.delay
        if mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "%s is unavailable" % self.name)
        if mode == "slow":
            threading.Event().wait(delay)  # the server's processing time, not a synchronization
        return reply()

    def count(self):
        with self.lock:
            return self.calls

    def stop(self):
        self.server.stop(0).wait(5)


def start_servers(cls, names):
    servers = []
    for name in names:
        s = Server(name)
        cls.addClassCleanup(s.stop)
        servers.append(s)
    return servers


def say(channel, name="x", timeout=CALL_TIMEOUT, path=None):
    if path is None:
        return hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name=name), timeout=timeout).message
    call = channel.unary_unary(path, request_serializer=hw.HelloRequest.SerializeToString,
                               response_deserializer=hw.HelloReply.FromString)
    return call(hw.HelloRequest(name=name), timeout=timeout).message


class RoundRobinTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.servers = start_servers(cls, ["a", "b", "c"])
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", "greeter:50051")],
                        native={"endpoints": {"greeter:50051": [s.address for s in cls.servers]}})

    def test_1000_calls_spread_evenly_over_three_endpoints(self):
        before = [s.count() for s in self.servers]
        answered = {"a": 0, "b": 0, "c": 0}
        with self.proxy.channel() as channel:
            for i in range(1000):
                answered[say(channel, str(i)).split(":")[0]] += 1
        got = [s.count() - b for s, b in zip(self.servers, before)]
        self.assertEqual(sum(got), 1000)
        self.assertEqual(got, [answered["a"], answered["b"], answered["c"]])
        for n in got:
            self.assertLessEqual(abs(n - 1000 / 3), 1000 / 3 * 0.05, "round robin spread: %r" % got)


class LeastRequestTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.servers = start_servers(cls, ["fast1", "fast2", "slow"])
        cls.servers[2].mode, cls.servers[2].delay = "slow", 0.1
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", "greeter:50051",
                                 load_balancer={"policy": "least_request"})],
                        native={"endpoints": {"greeter:50051": [s.address for s in cls.servers]}})

    def test_the_busy_endpoint_gets_less(self):
        with self.proxy.channel() as channel:
            def worker(k):
                for i in range(40):
                    say(channel, "%d-%d" % (k, i))
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(CALL_TIMEOUT * 4)
                self.assertFalse(t.is_alive())
        fast1, fast2, slow = (s.count() for s in self.servers)
        self.assertEqual(fast1 + fast2 + slow, 320)
        # Round robin would give each a third; the two-choices draw keeps the
        # endpoint with calls in flight well below the idle ones.
        self.assertLess(slow, 0.6 * min(fast1, fast2), "fast1=%d fast2=%d slow=%d" % (fast1, fast2, slow))


class EjectionTest(NuncioTestCase):
    EJECT_MS = 2000 * SLOW

    @classmethod
    def setUpClass(cls):
        cls.servers = start_servers(cls, ["a", "b", "c"])
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", "greeter:50051")],
                        native={"endpoints": {"greeter:50051": [s.address for s in cls.servers]},
                                "outlier_detection": {"consecutive_failures": 3,
                                                      "base_ejection_time_ms": cls.EJECT_MS,
                                                      "max_ejection_percent": 50}})

    def test_a_failing_endpoint_gets_no_traffic_until_its_ejection_ends(self):
        a, b, c = self.servers
        b.mode = "unavailable"
        failures = 0
        with self.proxy.channel() as channel:
            # Round robin: b gets every third call; its third failure ejects it.
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while b.count() < 3:
                self.assertLess(time.monotonic(), deadline)
                try:
                    say(channel)
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
                    failures += 1
            ejected_at = time.monotonic()
            self.assertEqual(failures, 3)
            self.assertIn("ejected for %d ms after 3 failures in a row" % self.EJECT_MS, self.proxy_log())
            self.assertEqual(self.proxy.stats()["upstream_ejections"], 1)

            # b is healthy again, but out of rotation: it gets nothing, nothing fails.
            b.mode = "ok"
            seen = b.count()
            for i in range(60):
                self.assertNotEqual(say(channel).split(":")[0], "b")
            elapsed = time.monotonic() - ejected_at
            self.assertLess(elapsed, self.EJECT_MS / 1000.0, "too slow to observe the ejection window")
            self.assertEqual(b.count(), seen, "an ejected endpoint got traffic")

            # Once the ejection time is over it is back in rotation.
            deadline = ejected_at + self.EJECT_MS / 1000.0 + SETTLE_TIMEOUT
            while b.count() == seen:
                self.assertLess(time.monotonic(), deadline, "b never came back")
                say(channel)
                threading.Event().wait(0.02)  # pacing the probe calls
            self.assertGreaterEqual(time.monotonic() - ejected_at, self.EJECT_MS / 1000.0 * 0.95,
                                    "b came back before its ejection time was over")
            self.assertIn("back in rotation", self.proxy_log())


class RetryTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.servers = start_servers(cls, ["first", "second"])
        cls.dead_port = free_port()
        endpoints = [s.address for s in cls.servers]
        cls.start_proxy([
            mapping("retry", "/helloworld.Greeter/", "greeter:50051",
                    retry_policy={"retry_on": "unavailable", "num_retries": 1}),
            mapping("noretry", "/noretry/", "greeter:50051", rewrite="/helloworld.Greeter/"),
            mapping("echo", "/echo.Echo/", "greeter:50051",
                    retry_policy={"retry_on": "unavailable", "num_retries": 1}),
            mapping("pertry", "/pertry/", "greeter:50051", rewrite="/helloworld.Greeter/",
                    retry_policy={"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "%dms" % (300 * SLOW)}),
            mapping("connect", "/connect/", "dead:1", rewrite="/helloworld.Greeter/",
                    retry_policy={"retry_on": "connect-failure", "num_retries": 2}),
        ], native={"endpoints": {"greeter:50051": endpoints,
                                 "dead:1": ["127.0.0.1:%d" % cls.dead_port, cls.servers[1].address]},
                   # every call here fails on "first": keep it in rotation
                   "outlier_detection": {"consecutive_failures": 0}})

    def setUp(self):
        super().setUp()
        for s in self.servers:
            s.mode = "ok"

    def test_a_retry_turns_an_unavailable_first_endpoint_into_a_success(self):
        first, second = self.servers
        first.mode = "unavailable"
        with self.proxy.channel() as channel:
            for i in range(10):
                before = (first.count(), second.count())
                self.assertEqual(say(channel, str(i)), "second:%d" % i)
                tried_first = first.count() - before[0]
                self.assertEqual(second.count() - before[1], 1)
                self.assertIn(tried_first, (0, 1))
            self.assertGreaterEqual(first.count(), 4, "round robin should have sent calls to first")
            self.assertIn("retrying in", self.proxy_log())
            self.assertGreaterEqual(self.proxy.stats()["upstream_retries"], first.count())
            self.assertIn("attempts=2", self.proxy_log())
            # the same calls without a retry policy: the UNAVAILABLE reaches the client
            failed = 0
            for i in range(4):
                try:
                    say(channel, path="/noretry/SayHello")
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
                    self.assertEqual(e.details(), "first is unavailable")
                    failed += 1
            self.assertGreaterEqual(failed, 1)

    def test_a_retried_call_replays_its_whole_request_stream(self):
        first, second = self.servers
        first.mode = "unavailable"
        texts = ["m%d" % i for i in range(5)]
        with self.proxy.channel() as channel:
            stub = echo_grpc.EchoStub(channel)
            for _ in range(4):
                reply = stub.Collect(iter([echo.EchoRequest(text=t) for t in texts]), timeout=CALL_TIMEOUT)
                self.assertEqual(reply.text, "second:" + ",".join(texts))
        with second.lock:
            self.assertTrue(second.collected)
            self.assertTrue(all(c == texts for c in second.collected), second.collected)

    def test_per_try_timeout_moves_a_slow_call_to_the_other_endpoint(self):
        first, second = self.servers
        first.mode, first.delay = "slow", 3.0 * SLOW
        with self.proxy.channel() as channel:
            for i in range(3):
                started = time.monotonic()
                self.assertEqual(say(channel, str(i), path="/pertry/SayHello"), "second:%d" % i)
                self.assertLess(time.monotonic() - started, 2.0 * SLOW)
        self.assertIn("per-try timeout", self.proxy_log())

    def test_connect_failure_is_retried_on_another_endpoint(self):
        with self.proxy.channel() as channel:
            for i in range(6):
                self.assertEqual(say(channel, str(i), path="/connect/SayHello"), "second:%d" % i)
        self.assertIn("connect failure: retrying", self.proxy_log())


class ConnectBackoffTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", "127.0.0.1:%d" % cls.port)])

    def test_a_dead_endpoint_is_not_dialed_by_every_call_and_is_found_again(self):
        with self.proxy.channel() as channel:
            before = self.proxy.stats()["upstream_connects"]
            for i in range(30):
                with self.assertRaises(grpc.RpcError) as ctx:
                    say(channel, timeout=CALL_TIMEOUT)
                self.assertRpcCode(ctx, grpc.StatusCode.UNAVAILABLE)
            dials = self.proxy.stats()["upstream_connects"] - before
            self.assertLess(dials, 15, "30 calls dialed %d times: no backoff" % dials)
            self.assertGreaterEqual(dials, 2)
            self.assertIn("connects failed in a row: no new connection for", self.proxy_log())

            # The upstream comes up: within the (capped) backoff it is used again.
            server = Server("late", port=self.port)
            self.addCleanup(server.stop)
            deadline = time.monotonic() + 10.0 + SETTLE_TIMEOUT
            while True:
                try:
                    self.assertEqual(say(channel, "up"), "late:up")
                    break
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
                    self.assertLess(time.monotonic(), deadline, "the upstream was never dialed again")
                    threading.Event().wait(0.05)  # pacing the probe calls


if __name__ == "__main__":
    unittest.main()
