"""Ambassador's diagnostics (/ambassador/v0/diag/) on nuncio's admin port and, through
Emissary's internal Mappings, on the data port (behaviour notes §8; lua/nuncio/diag.lua,
lua/nuncio/ambassador/diag_routes.lua).

* A clean config with two gRPC Mappings: ?json=true lists the routes in evaluation order
  with file:line sources; ?json=true&filter=errors is [] (Emissary's gRPC KAT asserts it);
  the HTML page is served; all of it also through the data port.
* Then a broken Mapping (load_balancer.policy: fastest) is written and nuncio gets SIGHUP:
  every config error fails the whole load, so the old routes keep serving and the failed
  reload's error shows with its file:line, in JSON and on the page that Chromium renders
  (spec/browser/diag_page.mjs), which also saves a full-page screenshot.

Run by ctest (integration.test_diag) from spec/04-integration with NUNCIO_BIN / NUNCIO_SRC.
The screenshot goes to $NUNCIO_TEST_OUTPUT (a folder), else <build>/Testing/diag next to
$NUNCIO_BIN, else a temporary folder; its path is printed. The browser part needs node,
examples/grpc-web/node_modules and Chromium, like test_browser_grpc_web.py: without them it
fails and says how to get them.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from nuncio_fixture import (BIN, CALL_TIMEOUT, SETTLE_TIMEOUT, SLOW, SRC, NuncioTestCase,  # noqa: E402
                            ambassador_yaml, mapping, stubs)

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc

EXAMPLE = os.path.join(SRC, "examples", "grpc-web")
DRIVER = os.path.join(SRC, "spec", "browser", "diag_page.mjs")
CHROMIUM = os.environ.get("NUNCIO_CHROMIUM") or "/usr/bin/chromium"
PAGE_TIMEOUT_MS = 20000 * SLOW
DRIVER_TIMEOUT = 2 * PAGE_TIMEOUT_MS / 1000 + 30

DIAG = "/ambassador/v0/diag/"
INTERNAL = ("internal_readiness_probe_mapping", "internal_liveness_probe_mapping",
            "internal_diagnostics_probe_mapping")
# Emissary's order (§1.7): longer prefixes first; check_ready/check_alive (26 chars) tie on
# length and sort by prefix, descending; /ambassador/v0/ (15) after both gRPC prefixes.
EXPECTED_ORDER = ["internal_readiness_probe_mapping", "internal_liveness_probe_mapping", "greeter", "echo",
                  "internal_diagnostics_probe_mapping"]


def browser_prerequisites():
    missing = []
    if shutil.which("node") is None:
        missing.append("node on PATH (Node.js >= 20 with npm)")
    if not os.path.isfile(os.path.join(EXAMPLE, "node_modules", "playwright-core", "package.json")):
        missing.append("examples/grpc-web/node_modules (`make -C examples/grpc-web`, or `npm ci` there)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append("Chromium at %s (Debian package chromium, or set NUNCIO_CHROMIUM)" % CHROMIUM)
    if missing:
        return "the diagnostics browser test needs: " + "; ".join(missing)
    return None


def output_dir():
    d = os.environ.get("NUNCIO_TEST_OUTPUT")
    if not d:
        build = os.path.dirname(os.path.abspath(BIN))
        d = os.path.join(build, "Testing", "diag") if os.path.isdir(os.path.join(build, "Testing")) else None
    if not d:
        d = tempfile.mkdtemp(prefix="nuncio-diag-")
    os.makedirs(d, exist_ok=True)
    return d


def http_get(port, path, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def doc_sources(path):
    """{resource name: "path:line"} for the file the harness wrote: a resource's source is
    the line of its first key (apiVersion, right after "---"), as nuncio reports it; and
    {name: (first line, last line)} of each document."""
    with open(path) as f:
        lines = f.read().split("\n")
    starts = [i + 1 for i, l in enumerate(lines) if l == "---"]  # 1-based line of "---"
    sources, spans = {}, {}
    for k, start in enumerate(starts):
        end = starts[k + 1] - 1 if k + 1 < len(starts) else len(lines)
        for n in range(start, end + 1):
            m = re.match(r"^  name: \"?([^\"]+)\"?$", lines[n - 1])
            if m:
                sources[m.group(1)] = "%s:%d" % (path, start + 1)
                spans[m.group(1)] = (start, end)
                break
    return sources, spans


class DiagBase(NuncioTestCase):
    @classmethod
    def start(cls):
        cls.up = cls.start_upstream()
        cls.mappings = [
            mapping("greeter", "/helloworld.Greeter/", cls.up.address),
            mapping("echo", "/echo.EchoService/", cls.up.address),
        ]
        cls.start_proxy(cls.mappings)
        cls.amb_path = os.path.join(cls.proxy.dir, "ambassador.yaml")

    def get_json(self, path, port=None):
        status, ctype, body = http_get(port or self.proxy.admin_port, path)
        self.assertEqual(status, 200, "GET %s -> %d %s" % (path, status, body[:500]))
        self.assertTrue(ctype.startswith("application/json"), ctype)
        return json.loads(body)

    def check_routes(self, diag):
        sources, _ = doc_sources(self.amb_path)
        names = [r["name"] for r in diag["route_info"]]
        self.assertEqual(names, EXPECTED_ORDER, json.dumps(diag["route_info"], indent=1))
        for r in diag["route_info"]:
            if r["name"] in INTERNAL:
                self.assertEqual(r["source"], "(internal)")
                self.assertEqual(r["clusters"][0]["service"], "127.0.0.1:%d" % self.proxy.admin_port)
            else:
                self.assertEqual(r["source"], sources[r["name"]])
                self.assertEqual(r["clusters"][0]["service"], self.up.address)
                self.assertTrue(r["grpc"])

    def say_hello(self, name):
        channel = self.proxy.channel()
        try:
            return hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name=name), timeout=CALL_TIMEOUT).message
        finally:
            channel.close()

    def load_page(self, url, screenshot):
        """Chromium renders url; returns what spec/browser/diag_page.mjs printed."""
        p = subprocess.Popen(["node", DRIVER, url, "--screenshot", screenshot, "--timeout-ms", str(PAGE_TIMEOUT_MS),
                              "--chromium", CHROMIUM],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             cwd=SRC, start_new_session=True)
        try:
            stdout, stderr = p.communicate(timeout=DRIVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
            raise AssertionError("the browser driver did not finish within %ss\nstdout:\n%s\nstderr:\n%s"
                                 % (DRIVER_TIMEOUT, stdout, stderr))
        try:
            page = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise AssertionError("the browser driver printed no JSON (exit %d)\nstdout:\n%s\nstderr:\n%s"
                                 % (p.returncode, stdout, stderr))
        page["exit"] = p.returncode
        page["stderr"] = stderr
        return page


class DiagCleanConfigTest(DiagBase):
    """Two gRPC Mappings, nothing wrong."""

    @classmethod
    def setUpClass(cls):
        cls.start()

    def test_json_route_table_in_evaluation_order_with_sources(self):
        diag = self.get_json(DIAG + "?json=true")
        self.check_routes(diag)
        self.assertEqual(diag["errors"], [])
        self.assertTrue(diag["system"]["env_good"])
        self.assertIn("version", diag["system"])
        self.assertGreaterEqual(diag["nuncio"]["generation"], 1)
        kinds = sorted(r["kind"] for r in diag["resources"])
        self.assertEqual(kinds, ["Host", "Listener", "Mapping", "Mapping"])

    def test_filter_errors_is_empty_for_a_clean_config(self):
        # Emissary's AcceptanceGrpcTest: after a gRPC Mapping loads, the error list is empty
        self.assertEqual(self.get_json(DIAG + "?json=true&filter=errors"), [])

    def test_html_page_on_the_admin_port(self):
        status, ctype, body = http_get(self.proxy.admin_port, DIAG)
        self.assertEqual(status, 200, body[:500])
        self.assertTrue(ctype.startswith("text/html"), ctype)
        self.assertIn('<table id="routes">', body)
        self.assertIn('<p id="no-errors">', body)

    def test_the_same_through_the_data_port(self):
        # the internal Mapping /ambassador/v0/ routes to the admin listener
        diag = self.get_json(DIAG + "?json=true", port=self.proxy.port)
        self.check_routes(diag)
        self.assertEqual(self.get_json(DIAG + "?json=true&filter=errors", port=self.proxy.port), [])
        status, ctype, body = http_get(self.proxy.port, DIAG)
        self.assertEqual(status, 200, body[:500])
        self.assertIn('<table id="routes">', body)

    def test_probes_through_both_ports(self):
        for port in (self.proxy.admin_port, self.proxy.port):
            for path, text in (("/ambassador/v0/check_alive", "ambassador liveness check OK"),
                               ("/ambassador/v0/check_ready", "ambassador readiness check OK")):
                status, _, body = http_get(port, path)
                self.assertEqual((status, text), (200, body[:len(text)]), "port %d %s -> %d %r" % (port, path, status, body))

    def test_counters_show_the_calls(self):
        for i in range(3):
            self.assertEqual(self.say_hello("c%d" % i), "Hello, c%d!" % i)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            diag = self.get_json(DIAG + "?json=true")
            stats = next(r for r in diag["route_info"] if r["name"] == "greeter").get("stats") or {}
            if stats.get("requests", 0) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertGreaterEqual(stats.get("requests", 0), 3, json.dumps(stats))
        self.assertEqual(stats.get("errors_5xx"), 0)


class DiagFailedReloadTest(DiagBase):
    """A good config loads; then a Mapping with an invalid load_balancer.policy is added and
    nuncio gets SIGHUP. The whole reload fails (nuncio never half-loads), the old routes keep
    serving, and the diagnostics show the failed reload's error with its file:line."""

    @classmethod
    def setUpClass(cls):
        cls.start()
        status, _, body = http_get(cls.proxy.admin_port, DIAG + "?json=true")
        cls.before = json.loads(body) if status == 200 else None
        broken = mapping("broken", "/broken.Service/", cls.up.address, load_balancer={"policy": "fastest"})
        with open(cls.amb_path, "w") as f:
            f.write(ambassador_yaml(cls.proxy.port, cls.mappings + [broken]))
        cls.proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        cls.errors = None
        while time.monotonic() < deadline:
            status, _, body = http_get(cls.proxy.admin_port, DIAG + "?json=true&filter=errors")
            if status == 200 and json.loads(body):
                cls.errors = json.loads(body)
                break
            time.sleep(0.05)

    def test_filter_errors_lists_the_injected_error_with_file_line(self):
        self.assertIsNotNone(self.errors, "no error showed within %ss of SIGHUP" % SETTLE_TIMEOUT)
        self.assertEqual(len(self.errors), 1, json.dumps(self.errors, indent=1))
        e = self.errors[0]
        _, spans = doc_sources(self.amb_path)
        m = re.match(r"^(.*):(\d+)$", e["source"])
        self.assertIsNotNone(m, e["source"])
        self.assertEqual(m.group(1), self.amb_path)
        first, last = spans["broken"]
        self.assertTrue(first <= int(m.group(2)) <= last, "line %s outside the broken Mapping (%d-%d)"
                        % (m.group(2), first, last))
        self.assertEqual((e["kind"], e["name"]), ("Mapping", "broken"))
        self.assertIn("load_balancer.policy", e["error"])
        # the same through the data port
        self.assertEqual(self.get_json(DIAG + "?json=true&filter=errors", port=self.proxy.port), self.errors)

    def test_old_routes_keep_serving_and_show_in_order(self):
        self.assertEqual(self.say_hello("still"), "Hello, still!")
        diag = self.get_json(DIAG + "?json=true")
        self.check_routes(diag)  # the broken Mapping is not in the serving table
        self.assertFalse(diag["system"]["env_good"])
        self.assertGreaterEqual(diag["nuncio"]["reloads"]["failed"], 1)
        if self.before is not None:
            self.assertEqual(diag["nuncio"]["generation"], self.before["nuncio"]["generation"])

    def test_browser_sees_the_route_rows_and_the_error(self):
        problem = browser_prerequisites()
        if problem:
            raise AssertionError(problem)
        shot = os.path.join(output_dir(), "diag_page.png")
        if os.path.exists(shot):
            os.remove(shot)
        url = "http://127.0.0.1:%d%s" % (self.proxy.admin_port, DIAG)
        page = self.load_page(url, shot)
        shown = json.dumps({k: page.get(k) for k in ("error", "title", "routes", "errors", "pageErrors", "stderr")},
                           indent=1)
        self.assertEqual(page["exit"], 0, "the browser driver failed\n" + shown)
        self.assertEqual(page["status"], 200, shown)
        self.assertEqual(page["title"], "nuncio diagnostics", shown)
        self.assertEqual(page["routeNames"], EXPECTED_ORDER, shown)
        sources, _ = doc_sources(self.amb_path)
        for row, name in zip(page["routes"], EXPECTED_ORDER):
            self.assertEqual(len(row), 11, shown)  # #, match, host, method, cluster, weight, source, 3 counters, latency
            self.assertEqual(row[6], "(internal)" if name in INTERNAL else sources[name], shown)
        self.assertEqual(len(page["errors"]), 1, shown)
        self.assertIn("load_balancer.policy", page["errors"][0])
        self.assertTrue(page["errorSources"][0].startswith(self.amb_path + ":"), shown)
        self.assertEqual(page["scripts"], 0, shown)
        self.assertEqual(page["pageErrors"], [], shown)
        self.assertTrue(os.path.isfile(shot), "no screenshot at %s" % shot)
        with open(shot, "rb") as f:
            head = f.read(8)
        self.assertEqual(head, b"\x89PNG\r\n\x1a\n", "not a PNG: %s" % shot)
        self.assertGreater(os.path.getsize(shot), 10000, "a suspiciously small screenshot: %s" % shot)
        print("diagnostics page screenshot: %s" % shot, file=sys.stderr)
