"""nuncio's command line: --version, --help, -t (validate), and refusing to
start on a broken configuration.

Run by ctest as `/usr/bin/python3 -m unittest -v test_cli` in spec/04-integration
with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan) set.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from nuncio_fixture import BIN, SRC, START_TIMEOUT, free_port, port_accepts  # noqa: E402

GOOD_RESOURCES = """\
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata:
  name: grpc-py
spec:
  hostname: "*"
  prefix: /helloworld.Greeter/
  rewrite: /helloworld.Greeter/
  grpc: true
  service: 127.0.0.1:50051
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata:
  name: host
spec:
  hostname: "*"
  requestPolicy:
    insecure:
      action: Route
---
apiVersion: getambassador.io/v3alpha1
kind: Listener
metadata:
  name: listener
spec:
  port: {port}
  bind_address: 127.0.0.1
  protocol: HTTP
  securityModel: XFP
  hostBinding:
    namespace:
      from: ALL
"""


class CliTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nuncio-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def native(self, ambassador="ambassador.yaml", admin_port=None):
        return self.write("nuncio.yaml", "admin:\n  address: 127.0.0.1\n  port: %d\nlog_level: info\n"
                          "ambassador: [%s]\n" % (admin_port or free_port(), ambassador))

    def run_nuncio(self, *args, timeout=START_TIMEOUT):
        p = subprocess.run([BIN] + list(args), cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
        self.assertNotIn("Sanitizer", p.stderr, "sanitizer report:\n" + p.stderr)
        return p

    def assertExit(self, p, code):
        self.assertEqual(p.returncode, code, "exit status %d, expected %d\n--- stdout:\n%s\n--- stderr:\n%s"
                         % (p.returncode, code, p.stdout, p.stderr))

    # ------------------------------------------------------------ info

    def test_version(self):
        for flag in ("--version", "-v"):
            with self.subTest(flag=flag):
                p = self.run_nuncio(flag)
                self.assertExit(p, 0)
                self.assertRegex(p.stdout + p.stderr, r"(?m)^nuncio \d+\.\d+\.\d+")

    def test_help(self):
        for flag in ("--help", "-h"):
            with self.subTest(flag=flag):
                p = self.run_nuncio(flag)
                self.assertExit(p, 0)
                text = p.stdout + p.stderr
                self.assertIn("usage: nuncio", text)
                for option in ("--config", "--ambassador", "--test", "--log-level", "--version"):
                    self.assertIn(option, text)

    def test_unknown_option_fails(self):
        p = self.run_nuncio("--no-such-option")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("usage: nuncio", p.stderr)

    # ------------------------------------------------------------ -t on valid configs

    def test_validate_valid_config(self):
        self.write("ambassador.yaml", GOOD_RESOURCES.format(port=free_port()))
        p = self.run_nuncio("-t", "-c", self.native())
        self.assertExit(p, 0)

    def test_validate_ambassador_only(self):
        path = self.write("ambassador.yaml", GOOD_RESOURCES.format(port=free_port()))
        p = self.run_nuncio("-t", "--ambassador", path)
        self.assertExit(p, 0)

    def test_validate_shipped_config(self):
        # conf/nuncio.yaml + examples/grpc-greeter/ambassador.yaml: what `make run` starts.
        p = self.run_nuncio("-t", "-c", os.path.join(SRC, "conf", "nuncio.yaml"))
        self.assertExit(p, 0)

    def test_validate_prints_a_route_summary_and_dump_routes(self):
        self.write("ambassador.yaml", GOOD_RESOURCES.format(port=free_port()))
        p = self.run_nuncio("-t", "-c", self.native())
        self.assertExit(p, 0)
        self.assertRegex(p.stdout, r"configuration OK \(1 listener\(s\), \d+ cluster\(s\), (\d+) route\(s\), \d+ worker")
        self.assertRegex(p.stdout, r"routes: \d+, in evaluation order \(--dump-routes lists them\)")
        p = self.run_nuncio("-t", "--dump-routes", "-c", self.native())
        self.assertExit(p, 0)
        rows = re.findall(r"(?m)^\s+(\d+)\s+(\S+)\s+(\S+)\s+host=", p.stdout)
        self.assertEqual([int(r[0]) for r in rows], list(range(1, len(rows) + 1)), p.stdout)
        # the user's Mapping with its file:line, and Emissary's internal probe Mappings
        self.assertRegex(p.stdout, r"ambassador\.yaml:\d+\)")
        self.assertIn("/ambassador/v0/check_ready", p.stdout)
        p = self.run_nuncio("--dump-routes", "-c", self.native())  # implies -t: never starts serving
        self.assertExit(p, 0)

    def test_workers_and_drain_timeout_keys(self):
        self.write("ambassador.yaml", GOOD_RESOURCES.format(port=free_port()))
        native = self.native()
        with open(native, "a") as f:
            f.write("workers: 3\ndrain_timeout_ms: 5000\n")
        p = self.run_nuncio("-t", "-c", native)
        self.assertExit(p, 0)
        self.assertIn("3 worker(s)", p.stdout)
        with open(native, "a") as f:
            f.write("workers: lots\n")
        p = self.run_nuncio("-t", "-c", native)
        self.assertExit(p, 1)
        self.assertIn("workers: must be auto or an integer from 1 to 64", p.stderr)

    # ------------------------------------------------------------ -t on broken configs

    def assertNames(self, p, fname, line):
        """stderr has `<fname>:<line>:` (or `<fname>:<line> `), i.e. the file and the line."""
        self.assertRegex(p.stderr, r"%s:%d\b" % (re.escape(fname), line),
                         "stderr should name %s line %d:\n%s" % (fname, line, p.stderr))

    def test_validate_broken_yaml(self):
        # Line 8 is indented with a tab: a YAML syntax error on that line.
        self.write("ambassador.yaml", textwrap.dedent("""\
            ---
            apiVersion: getambassador.io/v3alpha1
            kind: Mapping
            metadata:
              name: broken
            spec:
              prefix: /a/
            \tservice: 127.0.0.1:50051
            """))
        p = self.run_nuncio("-t", "-c", self.native())
        self.assertExit(p, 1)
        self.assertNames(p, "ambassador.yaml", 8)

    def test_validate_broken_native_yaml(self):
        path = self.write("nuncio.yaml", "admin:\n  port: 8877\nchain: [\n")
        p = self.run_nuncio("-t", "-c", path)
        self.assertExit(p, 1)
        self.assertRegex(p.stderr, r"nuncio\.yaml:\d+")

    def test_validate_mapping_without_service(self):
        # The Mapping document spans lines 2-9; the error must point into it.
        self.write("ambassador.yaml", textwrap.dedent("""\
            ---
            apiVersion: getambassador.io/v3alpha1
            kind: Mapping
            metadata:
              name: no-service
            spec:
              hostname: "*"
              prefix: /helloworld.Greeter/
              grpc: true
            """) + "---\n" + GOOD_RESOURCES.format(port=free_port()).split("---\n", 2)[2])
        p = self.run_nuncio("-t", "-c", self.native())
        self.assertExit(p, 1)
        m = re.search(r"ambassador\.yaml:(\d+)\b[^\n]*no-service[^\n]*service", p.stderr)
        self.assertIsNotNone(m, "stderr should name the file, a line and the missing service:\n" + p.stderr)
        self.assertTrue(2 <= int(m.group(1)) <= 9, "line %s is outside the Mapping (2-9)" % m.group(1))

    def test_validate_listener_port_out_of_range(self):
        for port in (70000, 0, -1):
            with self.subTest(port=port):
                text = GOOD_RESOURCES.format(port=port)
                line = text.splitlines().index("  port: %d" % port) + 1
                self.write("ambassador.yaml", text)
                p = self.run_nuncio("-t", "-c", self.native())
                self.assertExit(p, 1)
                self.assertNames(p, "ambassador.yaml", line)
                self.assertIn("port", p.stderr)

    def test_validate_missing_file(self):
        p = self.run_nuncio("-t", "-c", os.path.join(self.dir, "nope.yaml"))
        self.assertExit(p, 1)
        self.assertIn("nope.yaml", p.stderr)

    # ------------------------------------------------------------ starting

    def test_start_with_broken_config_exits_1_without_serving(self):
        listen_port, admin_port = free_port(), free_port()
        self.write("ambassador.yaml", GOOD_RESOURCES.format(port=listen_port).replace(
            "  service: 127.0.0.1:50051\n", ""))
        p = self.run_nuncio("-c", self.native(admin_port=admin_port))
        self.assertExit(p, 1)
        self.assertIn("ambassador.yaml", p.stderr)
        self.assertNotRegex(p.stderr, r"\bready\b|listener \S+ on ", "it must not start serving:\n" + p.stderr)
        self.assertFalse(port_accepts(listen_port))
        self.assertFalse(port_accepts(admin_port))

    def test_start_with_broken_yaml_exits_1(self):
        self.write("ambassador.yaml", "---\nkind: Mapping\nmetadata: {name: [\n")
        p = self.run_nuncio("-c", self.native())
        self.assertExit(p, 1)
        self.assertRegex(p.stderr, r"ambassador\.yaml:\d+")


if __name__ == "__main__":
    unittest.main(verbosity=2)
