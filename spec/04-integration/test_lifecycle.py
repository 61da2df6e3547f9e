"""Running in production (issue 8): hot reload under load, a broken reload,
graceful drain on SIGTERM, Prometheus metrics (parsed, not grepped), grpc_stats,
several workers, the access log. Real grpcio client and server throughout."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "helpers"))

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from nuncio_fixture import (SLOW, Nuncio, NuncioTestCase, ProxyError, ambassador_yaml, mapping,  # noqa: E402
                            stubs)

s = stubs()
hw, hw_grpc = s.helloworld_pb2, s.helloworld_pb2_grpc
echo, echo_grpc = s.echo_pb2, s.echo_pb2_grpc

CALL_TIMEOUT = 10 * SLOW
SETTLE = 15 * SLOW


def module(**config):
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "Module", "metadata": {"name": "ambassador"},
            "spec": {"config": config}}


def write_atomically(path, text):
    """As editors and ConfigMaps do: a new file renamed over the old one."""
    tmp = path + ".tmp~"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def metrics(proxy):
    status, body = proxy.admin_get("/metrics")
    if status != 200:
        raise ProxyError("GET /metrics -> %d" % status)
    samples = {}
    for fam in text_string_to_metric_families(body):
        for smp in fam.samples:
            samples.setdefault(smp.name, []).append((smp.labels, smp.value))
    return samples, body


def total(samples, name, **labels):
    """Sum of name's samples with these labels. The parser names a counter's
    sample NAME_total even when the exposition wrote NAME (envoy_cluster_grpc_X_0)."""
    found = samples.get(name) or samples.get(name + "_total", [])
    return sum(v for lbl, v in found if all(lbl.get(k) == v2 for k, v2 in labels.items()))


def diag_errors(proxy):
    status, body = proxy.admin_get("/ambassador/v0/diag/?json=true&filter=errors")
    if status not in (200, 503):
        raise ProxyError("diag filter=errors -> %d" % status)
    return json.loads(body)


class Load(threading.Thread):
    """A client loop: SayHello calls one after another until told to stop."""

    def __init__(self, port, minimum):
        super().__init__(daemon=True)
        self.port, self.minimum = port, minimum
        self.ok, self.failures = 0, []
        self.stop_event = threading.Event()

    def run(self):
        with grpc.insecure_channel("127.0.0.1:%d" % self.port) as ch:
            stub = hw_grpc.GreeterStub(ch)
            i = 0
            while not self.stop_event.is_set() or self.ok + len(self.failures) < self.minimum:
                try:
                    r = stub.SayHello(hw.HelloRequest(name="n%d" % i), timeout=CALL_TIMEOUT)
                    if r.message != "Hello, n%d!" % i:
                        self.failures.append((i, "wrong reply %r" % r.message))
                    else:
                        self.ok += 1
                except grpc.RpcError as e:
                    self.failures.append((i, "%s %s" % (e.code(), e.details())))
                i += 1


class ReloadTest(NuncioTestCase):
    """Twenty reloads that change routes under a steady gRPC load, then a broken one."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream(workers=16)
        cls.start_proxy(cls.mappings(0), native={"workers": 2})

    @classmethod
    def mappings(cls, gen, with_echo=False):
        out = [mapping("greeter", "/helloworld.Greeter/", cls.up.address,
                       add_request_headers={"x-route-generation": {"value": str(gen)}})]
        if with_echo:
            out.append(mapping("echo", "/echo.Echo/", cls.up.address))
        return out

    def rewrite(self, gen, with_echo=False, broken=False, extra=""):
        text = ambassador_yaml(self.proxy.port, self.mappings(gen, with_echo)) + extra
        if broken:
            text += "---\napiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: broken}\n" \
                    "spec: {prefix: /broken/, service: x, load_balancer: {policy: fastest}}\n"
        write_atomically(os.path.join(self.proxy.dir, "ambassador.yaml"), text)

    def generation_seen(self):
        md = self.up.calls_to("/helloworld.Greeter/SayHello")
        return md[-1].get("x-route-generation") if md else None

    def wait_generation(self, gen):
        deadline = time.monotonic() + SETTLE
        with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) as ch:
            stub = hw_grpc.GreeterStub(ch)
            while time.monotonic() < deadline:
                stub.SayHello(hw.HelloRequest(name="probe"), timeout=CALL_TIMEOUT)
                if self.generation_seen() == str(gen):
                    return
                time.sleep(0.02)  # poll interval
        self.fail("route generation %d never reached the upstream (last seen %r)" % (gen, self.generation_seen()))

    def test_bad_reloads_are_refused_and_the_old_config_serves(self):
        bad = {
            "YAML syntax": "---\napiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: y}\n"
                           "spec: {prefix: [unclosed\n",
            "Lua syntax": "---\napiVersion: getambassador.io/v3alpha1\nkind: Module\nmetadata: {name: ambassador}\n"
                          "spec:\n  config:\n    lua_scripts: |\n      function envoy_on_request(h) h:foo( end\n",
            "missing certificate": "---\napiVersion: getambassador.io/v3alpha1\nkind: TLSContext\n"
                                   "metadata: {name: tc}\nspec: {hosts: [a.example], secret: no-such-secret}\n",
        }
        for n, (what, extra) in enumerate(sorted(bad.items())):
            with self.subTest(what):
                failed = total(metrics(self.proxy)[0], "nuncio_config_reloads_total", result="failed")
                gen = self.proxy.stats()["generation"]
                self.rewrite(500 + n, extra=extra)
                self.proxy.proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + SETTLE
                while time.monotonic() < deadline and not diag_errors(self.proxy):
                    time.sleep(0.02)  # poll interval
                errors = diag_errors(self.proxy)
                self.assertTrue(errors, "the %s error shows in diag filter=errors" % what)
                self.assertTrue(any(re.search(r"ambassador\.yaml:\d+", e.get("source") or e.get("text", ""))
                                    for e in errors), errors)
                self.assertGreater(total(metrics(self.proxy)[0], "nuncio_config_reloads_total", result="failed"),
                                   failed)
                self.assertEqual(self.proxy.stats()["generation"], gen, "no new generation")
                with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) as ch:
                    r = hw_grpc.GreeterStub(ch).SayHello(hw.HelloRequest(name="old"), timeout=CALL_TIMEOUT)
                self.assertEqual(r.message, "Hello, old!")
                self.assertNotEqual(self.generation_seen(), str(500 + n), "the refused routes must not serve")
                self.rewrite(600 + n)
                self.wait_generation(600 + n)
                self.assertEqual(diag_errors(self.proxy), [])
        # An access log that cannot be opened on reload: logged, the old log kept, the routes still change.
        mark = self.proxy.log_size()
        self.rewrite(700, extra="---\napiVersion: getambassador.io/v3alpha1\nkind: Module\n"
                                "metadata: {name: ambassador}\nspec: {config: {envoy_log_path: /nonexistent/a.log}}\n")
        self.wait_generation(700)
        self.assertIn("the old access log is kept", self.proxy.log(mark))
        self.rewrite(701)
        self.wait_generation(701)

    def test_reloads_under_load_lose_no_call(self):
        load = Load(self.proxy.port, minimum=2000)
        load.start()
        start = self.proxy.stats()
        start_gen = start["generation"]
        for gen in range(1, 21):
            self.rewrite(gen, with_echo=gen >= 20)
            if gen % 2:
                self.proxy.proc.send_signal(signal.SIGHUP)  # even ones: the file watch alone
            self.wait_generation(gen)
        with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) as ch:
            r = echo_grpc.EchoStub(ch).Echo(echo.EchoRequest(text="new route"), timeout=CALL_TIMEOUT)
        self.assertEqual(r.text, "new route", "the route added by the last reload serves")
        load.stop_event.set()
        load.join(120 * SLOW)
        self.assertFalse(load.is_alive())
        self.assertEqual(load.failures, [], "calls failed during reloads")
        self.assertGreaterEqual(load.ok, 2000)
        stats = self.proxy.stats()
        self.assertGreaterEqual(stats["generation"], start_gen + 20)
        self.assertEqual(stats["reloads_failed"], start["reloads_failed"])
        samples, _ = metrics(self.proxy)
        self.assertGreaterEqual(total(samples, "nuncio_config_reloads_total", result="ok"), start["reloads_ok"] + 20)
        self.assertEqual(diag_errors(self.proxy), [])

        # A broken reload mid-load: refused, logged with file:line, counted; old routes serve.
        load = Load(self.proxy.port, minimum=300)
        load.start()
        failed_before = total(metrics(self.proxy)[0], "nuncio_config_reloads_total", result="failed")
        self.rewrite(99, with_echo=False, broken=True)
        self.proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline and not diag_errors(self.proxy):
            time.sleep(0.02)  # poll interval
        errors = diag_errors(self.proxy)
        self.assertEqual(len(errors), 1, errors)
        self.assertRegex(errors[0]["source"], r"ambassador\.yaml:\d+$")
        self.assertIn("fastest", errors[0]["error"])
        samples, _ = metrics(self.proxy)
        self.assertGreater(total(samples, "nuncio_config_reloads_total", result="failed"), failed_before)
        self.assertRegex(self.proxy_log(), r"ambassador\.yaml:\d+: Mapping broken")
        with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) as ch:
            r = echo_grpc.EchoStub(ch).Echo(echo.EchoRequest(text="still"), timeout=CALL_TIMEOUT)
        self.assertEqual(r.text, "still", "the old generation (with the echo route) keeps serving")
        self.assertEqual(self.generation_seen(), "20")
        load.stop_event.set()
        load.join(60 * SLOW)
        self.assertEqual(load.failures, [], "calls failed around the broken reload")
        # Fixed again: the errors go away.
        self.rewrite(21, with_echo=True)
        self.wait_generation(21)
        self.assertEqual(diag_errors(self.proxy), [])


VERSION_FILTER = r"""
local tag = require("it_tag")
return { new = function() return {
  on_request_headers = function(_, s) s.request:set("x-filter-version", tag) end,
} end }
"""


class FilterReloadTest(NuncioTestCase):
    """A reload runs the filter files as they are now (and the modules they require)."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address)], chain=[{"name": "it_ver"}],
                        lua_files={"it_ver.lua": VERSION_FILTER, "it_tag.lua": 'return "v1"'})

    def version_seen(self):
        with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) as ch:
            hw_grpc.GreeterStub(ch).SayHello(hw.HelloRequest(name="v"), timeout=CALL_TIMEOUT)
        return self.up.calls_to("/helloworld.Greeter/SayHello")[-1].get("x-filter-version")

    def test_edited_filter_module_takes_effect(self):
        self.assertEqual(self.version_seen(), "v1")
        write_atomically(os.path.join(self.proxy.lua_dir, "it_tag.lua"), 'return "v2"')  # the watch reloads
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline and self.version_seen() != "v2":
            time.sleep(0.05)  # poll interval
        self.assertEqual(self.version_seen(), "v2")
        # A syntax error in the filter: refused, the running version keeps serving.
        write_atomically(os.path.join(self.proxy.lua_dir, "it_tag.lua"), 'return "v3" +')
        self.proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline and not diag_errors(self.proxy):
            time.sleep(0.05)  # poll interval
        self.assertTrue(any("it_tag" in (e.get("error", "") + e.get("text", "")) for e in diag_errors(self.proxy)),
                        diag_errors(self.proxy))
        self.assertEqual(self.version_seen(), "v2")


class DrainTest(NuncioTestCase):
    """SIGTERM with 100 streaming calls in flight: every one completes, exit 0."""

    CALLS = 100
    REPLIES = 20

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream(workers=cls.CALLS + 16)
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address)], native={"workers": 2})

    def test_sigterm_lets_in_flight_streams_finish(self):
        channels = [grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) for _ in range(4)]
        try:
            calls = [echo_grpc.EchoStub(channels[i % 4]).Expand(
                echo.ExpandRequest(text="d%d" % i, count=self.REPLIES, interval_ms=50), timeout=60 * SLOW)
                for i in range(self.CALLS)]
            firsts = [next(c) for c in calls]  # every call is in flight: its first reply arrived
            self.assertEqual([f.index for f in firsts], [0] * self.CALLS)
            self.proxy.proc.send_signal(signal.SIGTERM)
            results = []
            for i, c in enumerate(calls):
                try:
                    results.append(1 + sum(1 for _ in c))
                except grpc.RpcError as e:
                    results.append("%s %s" % (e.code(), e.details()))
            self.assertEqual(results, [self.REPLIES] * self.CALLS, "every stream must complete during the drain")
            rc = self.proxy.proc.wait(30 * SLOW)
            self.assertEqual(rc, 0, "exit status after a graceful drain")
            self.assertIn("draining", self.proxy_log())
        finally:
            for ch in channels:
                ch.close()
            self.proxy.proc = None  # already reaped


class MetricsTest(NuncioTestCase):
    """/metrics counts what the test did; grpc_stats adds Envoy's per-method series."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream(workers=16)
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address),
                         mapping("echo", "/echo.Echo/", cls.up.address)],
                        docs=[module(grpc_stats={"all_methods": True, "upstream_stats": True})],
                        native={"workers": 2})

    def test_counters_match_the_calls(self):
        before, _ = metrics(self.proxy)
        ok, failed = 7, 3
        conns = 12
        for k in range(conns):  # separate connections, so both workers take some
            with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port,
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                hw_grpc.GreeterStub(ch).SayHello(hw.HelloRequest(name="x"), timeout=CALL_TIMEOUT)
        with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) as ch:
            stub = echo_grpc.EchoStub(ch)
            for i in range(ok):
                stub.Echo(echo.EchoRequest(text="ok"), timeout=CALL_TIMEOUT)
            for i in range(failed):
                with self.assertRaises(grpc.RpcError):
                    stub.Echo(echo.EchoRequest(text="status:13:boom"), timeout=CALL_TIMEOUT)
            r = stub.Collect(iter([echo.EchoRequest(text=str(i)) for i in range(5)]), timeout=CALL_TIMEOUT)
            self.assertEqual(r.index, 5)
        self.proxy.wait_stats(live_streams=0)
        after, body = metrics(self.proxy)

        def total(_, name, **labels):  # what this test added
            return globals()["total"](after, name, **labels) - globals()["total"](before, name, **labels)
        samples = after
        self.assertEqual(total(samples, "nuncio_requests_total", route="greeter", grpc_status="0", status="200"),
                         conns)
        self.assertEqual(total(samples, "nuncio_requests_total", route="echo", grpc_status="0"), ok + 1)
        self.assertEqual(total(samples, "nuncio_requests_total", route="echo", grpc_status="13"), failed)
        self.assertEqual(total(samples, "nuncio_request_duration_seconds_count", route="echo"), ok + failed + 1)
        self.assertEqual(total(samples, "nuncio_request_duration_seconds_bucket", route="greeter", le="+Inf"), conns)
        self.assertEqual(globals()["total"](after, "nuncio_streams_active"), 0)
        self.assertEqual(globals()["total"](after, "nuncio_workers"), 2)
        # Both workers took connections (SO_REUSEPORT spreads them).
        per_worker = {lbl["worker"]: v for lbl, v in after["nuncio_worker_downstream_connections_total"]}
        self.assertEqual(sorted(per_worker), ["0", "1"])
        self.assertGreater(per_worker["0"], 0, per_worker)
        self.assertGreater(per_worker["1"], 0, per_worker)
        self.assertGreaterEqual(sum(per_worker.values()), conns + 1)
        # grpc_stats: Envoy's names, as Emissary's tests read them.
        self.assertEqual(total(samples, "envoy_cluster_grpc_Echo_0"), ok + 1)
        self.assertEqual(total(samples, "envoy_cluster_grpc_Echo_13"), failed)
        self.assertEqual(total(samples, "envoy_cluster_grpc_Echo_total"), ok + failed + 1)
        self.assertEqual(total(samples, "envoy_cluster_grpc_Echo_success"), ok + 1)
        self.assertEqual(total(samples, "envoy_cluster_grpc_Echo_request_message_count",
                               envoy_grpc_bridge_method="Collect"), 5)
        self.assertGreaterEqual(total(samples, "envoy_cluster_grpc_Echo_upstream_rq_time_count"), ok + failed + 1)
        self.assertEqual(total(samples, "envoy_cluster_grpc_Greeter_total"), conns)

    def test_access_log_lines_in_envoy_format(self):
        with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port,
                                   options=[("grpc.primary_user_agent", "agent-access-1")]) as ch:
            hw_grpc.GreeterStub(ch).SayHello(hw.HelloRequest(name="log"), timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline and "agent-access-1" not in self.proxy_log():
            time.sleep(0.02)  # poll interval: the writer thread writes asynchronously
        self.assertRegex(self.proxy_log(),
                         r'\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "POST /helloworld\.Greeter/SayHello HTTP/2" '
                         r'200 - \d+ \d+ \d+ - "127\.0\.0\.1" "agent-access-1[^"]*" "[0-9a-f-]{36}" '
                         r'"127\.0\.0\.1:\d+" "127\.0\.0\.1:\d+"')


class AccessLogJsonTest(NuncioTestCase):
    """Module envoy_log_type json with envoy_log_path: one JSON object per request in that file."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.log_file = None

        def docs(n):
            cls.log_file = os.path.join(n.dir, "access.json")
            return [module(envoy_log_type="json", envoy_log_path=cls.log_file,
                           envoy_log_format={"method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
                                             "code": "%RESPONSE_CODE%", "grpc": "%GRPC_STATUS%"})]
        cls.start_proxy([mapping("greeter", "/helloworld.Greeter/", cls.up.address)], docs=docs)

    def test_json_lines(self):
        with grpc.insecure_channel("127.0.0.1:%d" % self.proxy.port) as ch:
            for i in range(3):
                hw_grpc.GreeterStub(ch).SayHello(hw.HelloRequest(name="j"), timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + SETTLE
        lines = []
        while time.monotonic() < deadline:
            if os.path.exists(self.log_file):
                with open(self.log_file) as f:
                    lines = [json.loads(line) for line in f if line.strip()]
                if len(lines) >= 3:
                    break
            time.sleep(0.02)  # poll interval
        self.assertEqual(len(lines), 3, lines)
        self.assertEqual(lines[0]["method"], "POST")
        self.assertEqual(lines[0]["path"], "/helloworld.Greeter/SayHello")
        self.assertEqual(lines[0]["code"], 200)
        self.assertEqual(lines[0]["grpc"], "OK")


class StartupErrorsTest(unittest.TestCase):
    def test_unwritable_access_log_is_a_clear_error_at_start(self):
        n = Nuncio([mapping("greeter", "/helloworld.Greeter/", "127.0.0.1:9")],
                   docs=[module(envoy_log_path="/nonexistent-dir/access.log")], name="badlog")
        try:
            with self.assertRaises(ProxyError) as ctx:
                n.start(attempts=1)
            self.assertIn("/nonexistent-dir/access.log", str(ctx.exception))
            self.assertEqual(n.returncode, 1)
        finally:
            n.cleanup()


if __name__ == "__main__":
    unittest.main()
