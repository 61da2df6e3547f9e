"""gRPC-Web from a real browser through nuncio (issue 6, acceptance 2).

Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core from
examples/grpc-web/node_modules: no browser download) loads the example page
(examples/grpc-web/dist, built by `make -C examples/grpc-web`) from its own
origin, a static server on a free port; the page calls helloworld.Greeter
through nuncio with Connect's gRPC-Web transport: a cross-origin fetch over
HTTP/1.1, so the browser sends a CORS preflight first. nuncio runs the example's
own Module and Mapping (examples/grpc-web/ambassador.yaml), adapted to the free
ports and the page's origin.

Nothing is skipped: without chromium, node, node_modules or the built page, the
test fails and says how to get them (`make test` installs and builds them all).

Run by ctest as `/usr/bin/python3 -m unittest -v test_browser_grpc_web` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (and NUNCIO_SANITIZE=1 under ASan).
"""
import functools
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from nuncio_fixture import SLOW, SRC, Greeter, NuncioTestCase  # noqa: E402

EXAMPLE = os.path.join(SRC, "examples", "grpc-web")
DIST = os.path.join(EXAMPLE, "dist")
DRIVER = os.path.join(SRC, "spec", "browser", "grpc_web_page.mjs")
CHROMIUM = os.environ.get("NUNCIO_CHROMIUM") or "/usr/bin/chromium"
# What the page waits for, and what this test waits for the driver (browser start included).
PAGE_TIMEOUT_MS = 20000 * SLOW
DRIVER_TIMEOUT = 2 * PAGE_TIMEOUT_MS / 1000 + 30

UNARY, STREAM = "/helloworld.Greeter/SayHello", "/helloworld.Greeter/SayHelloStreamReply"


def prerequisites():
    """Every missing piece, as one message saying how to get it; None when all is there."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append("%s (Debian's chromium: `make deps`, or apt-get install chromium)" % CHROMIUM)
    if shutil.which("node") is None:
        missing.append("node on PATH (Node.js >= 20 with npm)")
    if not os.path.isfile(os.path.join(EXAMPLE, "node_modules", "playwright-core", "package.json")):
        missing.append("examples/grpc-web/node_modules (`make -C examples/grpc-web`, or `npm ci` there)")
    page = [os.path.join(DIST, f) for f in ("index.html", "app.js")]
    if not all(os.path.isfile(p) for p in page):
        missing.append("the built page examples/grpc-web/dist (`make -C examples/grpc-web`)")
    else:
        sources = [os.path.join(EXAMPLE, "src", f) for f in ("main.ts", "index.html")]
        sources.append(os.path.join(EXAMPLE, "package-lock.json"))
        built = min(os.path.getmtime(p) for p in page)
        stale = [os.path.relpath(s, SRC) for s in sources if os.path.getmtime(s) > built]
        if stale:
            missing.append("a fresh build of examples/grpc-web/dist, older than %s (`make -C examples/grpc-web`)"
                           % ", ".join(stale))
    if not missing:
        return None
    return ("the browser test needs: %s. `make test` installs Debian's chromium and builds the page."
            % "; ".join(missing))


def example_resources(service, origin):
    """The Module and Mapping of examples/grpc-web/ambassador.yaml as raw YAML
    documents, with the Greeter at `service` and `origin` the only CORS origin
    (the harness writes its own Listener and Host on free ports)."""
    with open(os.path.join(EXAMPLE, "ambassador.yaml")) as f:
        text = f.read()
    docs = [d for d in re.split(r"(?m)^---\s*$", text) if re.search(r"(?m)^kind:\s*(Module|Mapping)\s*$", d)]
    kinds = sorted(re.search(r"(?m)^kind:\s*(\w+)", d).group(1) for d in docs)
    if kinds != ["Mapping", "Module"]:
        raise AssertionError("examples/grpc-web/ambassador.yaml: expected one Module and one Mapping, got %s" % kinds)
    out = []
    for doc in docs:
        if "kind: Mapping" in doc:
            doc, n_service = re.subn(r"(?m)^(\s+service:\s*)\S+\s*$", r"\g<1>%s" % service, doc)
            doc, n_origins = re.subn(r"(?m)^(\s+origins:\s*).*$", r"\g<1>[%s]" % origin, doc)
            if (n_service, n_origins) != (1, 1):
                raise AssertionError("examples/grpc-web/ambassador.yaml: the Mapping needs one `service:` line and "
                                     "one `origins: [...]` line under cors (found %d and %d)" % (n_service, n_origins))
        out.append(doc)
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass


class BrowserGrpcWebTest(NuncioTestCase):
    """One Greeter upstream, one proxy with the example's resources, one static
    server for the page; Chromium loads the page from the allowed origin (and once
    from an origin CORS does not allow)."""

    @classmethod
    def setUpClass(cls):
        problem = prerequisites()
        if problem:
            raise AssertionError(problem)
        cls.up = cls.start_upstream()
        handler = functools.partial(_QuietHandler, directory=DIST)
        cls.web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        cls.web.daemon_threads = True
        threading.Thread(target=cls.web.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.web.server_close)
        cls.addClassCleanup(cls.web.shutdown)
        cls.web_port = cls.web.server_address[1]
        cls.origin = "http://127.0.0.1:%d" % cls.web_port
        cls.start_proxy([], docs=example_resources(cls.up.address, cls.origin))
        cls.proxy_url = "http://127.0.0.1:%d" % cls.proxy.port

    def load_page(self, page_host, name):
        """Chromium loads the page from http://page_host:<static port>/ calling nuncio;
        returns what the driver printed (see spec/browser/grpc_web_page.mjs)."""
        url = "http://%s:%d/?proxy=%s&name=%s" % (page_host, self.web_port, self.proxy_url, name)
        # Its own process group: on a timeout, node and the Chromium it started go together.
        p = subprocess.Popen(["node", DRIVER, url, "--timeout-ms", str(PAGE_TIMEOUT_MS), "--chromium", CHROMIUM],
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

    def calls(self, *methods):
        with self.up.lock:
            return [m for m, _ in self.up.calls if m in methods]

    def test_page_shows_unary_and_streamed_replies_through_nuncio(self):
        before = len(self.calls(UNARY, STREAM))
        page = self.load_page("127.0.0.1", "browser")
        shown = json.dumps({k: page.get(k) for k in ("error", "bodyState", "unary", "unaryStatus", "stream",
                                                     "streamStatus", "console", "pageErrors", "failedRequests")},
                           indent=1)
        self.assertEqual(page["exit"], 0, "the browser driver failed: %s\n%s" % (page["stderr"], shown))
        self.assertEqual(page["pageOrigin"], self.origin)

        # Unary: the answer, as the page shows it.
        self.assertEqual(page["unaryStatus"]["state"], "done", shown)
        self.assertEqual(page["unary"], "Hello, browser!", shown)
        # Server streaming: every message, in order, then a clean end (grpc-status 0).
        expected = ["Hello %d, browser!" % i for i in range(Greeter.STREAM_REPLIES)]
        self.assertEqual(page["streamStatus"]["state"], "done", shown)
        self.assertEqual(page["stream"], expected, shown)
        self.assertEqual(page["streamStatus"]["text"], "OK: %d messages" % len(expected), shown)
        self.assertEqual(page["pageErrors"], [], shown)

        # Both calls reached the upstream, as gRPC, through nuncio.
        self.assertEqual(sorted(self.calls(UNARY, STREAM)[before:]), [UNARY, STREAM])

        # The calls were gRPC-Web, cross-origin, over HTTP/1.1 to nuncio, and nuncio
        # answered them with the CORS headers of the Mapping.
        posts = [r for r in page["requests"] if r["method"] == "POST"]
        self.assertEqual(sorted(r["url"] for r in posts), sorted(self.proxy_url + m for m in (UNARY, STREAM)), shown)
        for r in posts:
            with self.subTest(url=r["url"]):
                req, resp = r.get("requestHeaders", {}), r.get("responseHeaders", {})
                self.assertEqual(r["status"], 200, r)
                self.assertEqual(req.get("origin"), self.origin, r)
                self.assertEqual(req.get("content-type"), "application/grpc-web+proto", r)
                self.assertEqual(req.get("x-grpc-web"), "1", r)
                self.assertEqual(resp.get("access-control-allow-origin"), self.origin, r)
                exposed = {h.strip().lower() for h in resp.get("access-control-expose-headers", "").split(",")}
                self.assertTrue({"grpc-status", "grpc-message"} <= exposed, r)
                self.assertTrue(resp.get("content-type", "").startswith("application/grpc-web"), r)
        # The trailers came in the body's trailer frame and the page read them.
        for status in (page["unaryStatus"], page["streamStatus"]):
            self.assertIn("grpc-status", (status["trailers"] or "").split(","), shown)

        # The browser's CORS preflights: nuncio answered an OPTIONS for each method
        # itself (no grpc-status: not from the upstream), and Chromium sent each POST
        # only after its preflight succeeded.
        log = self.proxy_log()
        for method in (UNARY, STREAM):
            self.assertRegex(log, r"\] \S+ OPTIONS %s (200|204) grpc-status=- " % re.escape(method))
            self.assertRegex(log, r"\] \S+ POST %s 200 grpc-status=0 " % re.escape(method))

    def test_preflight_answer_is_the_mappings_cors(self):
        # The preflight Chromium sends, made by hand: nuncio answers it from the
        # Mapping's cors, without the upstream.
        before = len(self.up.methods_seen())
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=10 * SLOW)
        try:
            conn.request("OPTIONS", UNARY, headers={
                "Origin": self.origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,grpc-timeout,x-grpc-web,x-user-agent"})
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        headers = {k.lower(): v for k, v in resp.getheaders()}

        def values(name):
            return {v.strip().lower() for v in headers.get(name, "").split(",") if v.strip()}
        self.assertIn(resp.status, (200, 204), headers)
        self.assertEqual(headers.get("access-control-allow-origin"), self.origin, headers)
        self.assertTrue({"post", "options"} <= values("access-control-allow-methods"), headers)
        self.assertTrue({"content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"}
                        <= values("access-control-allow-headers"), headers)
        self.assertEqual(headers.get("access-control-max-age"), "86400", headers)
        self.assertEqual(self.up.methods_seen()[before:], [], "the preflight reached the upstream")

    def test_origin_not_allowed_by_cors_gets_nothing(self):
        # The same page from http://localhost:<port>: another origin, not in the
        # Mapping's cors origins. The preflight fails, the browser never sends the
        # calls, and the page shows the failure.
        before = len(self.calls(UNARY, STREAM))
        page = self.load_page("localhost", "stranger")
        shown = json.dumps({k: page.get(k) for k in ("error", "pageOrigin", "bodyState", "unaryStatus",
                                                     "streamStatus", "console", "failedRequests")}, indent=1)
        self.assertEqual(page["exit"], 0, "the browser driver failed: %s\n%s" % (page["stderr"], shown))
        self.assertEqual(page["pageOrigin"], "http://localhost:%d" % self.web_port, shown)
        self.assertEqual(page["unaryStatus"]["state"], "failed", shown)
        self.assertEqual(page["streamStatus"]["state"], "failed", shown)
        self.assertEqual(page["unary"], "", shown)
        self.assertEqual(page["stream"], [], shown)
        self.assertTrue(any("CORS" in line for line in page["console"]), shown)
        # Chromium did ask (the preflight reached nuncio) and never sent a call.
        log = self.proxy_log()
        self.assertRegex(log, r"\] \S+ OPTIONS %s " % re.escape(UNARY))
        self.assertNotRegex(log, r"\] \S+ POST /helloworld\.Greeter/")
        self.assertEqual(self.calls(UNARY, STREAM)[before:], [], "the upstream got calls from a disallowed origin")
