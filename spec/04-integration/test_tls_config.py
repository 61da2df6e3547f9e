"""Broken TLS configuration is refused (issue 3, "Bad input"): a missing certificate
file, a key that does not match its certificate, a Secret that is not base64 PEM.
`nuncio -t` exits 1 naming the file, the resource and the field; started for real,
nuncio exits 1 without listening. Also: the shipped TLS example validates.

Run by ctest as `/usr/bin/python3 -m unittest -v test_tls_config` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from certs import certs  # noqa: E402
from nuncio_fixture import (BIN, SRC, START_TIMEOUT, ambassador_yaml, free_port, host,  # noqa: E402
                            mapping, port_accepts, secret, tls_context)

C = certs()
EXAMPLE = os.path.join(SRC, "examples", "grpc-greeter-tls")


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode("ascii")


# A PEM armour around bytes that are no certificate.
BROKEN_PEM_CERT = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(b"\x30\x82 not DER at all " * 3) + \
    b"-----END CERTIFICATE-----\n"


class TlsConfigErrorTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nuncio-tls-config-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.port = free_port()

    def write_config(self, docs, admin_port=None):
        """ambassador.yaml: an HTTPS Listener, a Greeter Mapping and docs; returns the native config path."""
        with open(os.path.join(self.dir, "ambassador.yaml"), "w") as f:
            f.write(ambassador_yaml(self.port, [mapping("grpc-py", "/helloworld.Greeter/", "127.0.0.1:50051")],
                                    docs=docs, default_host=False, listener_protocol="HTTPS"))
        path = os.path.join(self.dir, "nuncio.yaml")
        with open(path, "w") as f:
            f.write("admin:\n  address: 127.0.0.1\n  port: %d\nlog_level: info\nambassador: [ambassador.yaml]\n"
                    % (admin_port or free_port()))
        return path

    def run_nuncio(self, *args):
        p = subprocess.run([BIN] + list(args), cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=START_TIMEOUT)
        self.assertNotIn("Sanitizer", p.stderr, "sanitizer report:\n" + p.stderr)
        return p

    def assertRefused(self, p, *needles):
        """Exit 1, and one stderr line holds ambassador.yaml:<line> and every needle."""
        self.assertEqual(p.returncode, 1, "exit status %d, expected 1\n--- stderr:\n%s" % (p.returncode, p.stderr))
        for line in p.stderr.splitlines():
            if re.search(r"ambassador\.yaml:\d+", line) and all(n in line for n in needles):
                return line
        self.fail("no stderr line names ambassador.yaml:<line> and %s:\n%s" % (needles, p.stderr))

    def validate(self, docs):
        return self.run_nuncio("-t", "-c", self.write_config(docs))

    # ------------------------------------------------------------ the good case first

    def test_valid_tls_config(self):
        p = self.validate([secret("server-cert", C.server.cert_pem, C.server.key_pem),
                           host("localhost", "localhost", tls_secret="server-cert", insecure="Redirect"),
                           tls_context("files", hosts=["api.example.com"], cert_chain_file=C.server.cert_path,
                                       private_key_file=C.server.key_path, alpn_protocols="h2",
                                       cacert_chain_file=C.ca.cert_path, cert_required=True),
                           tls_context("upstream", alpn_protocols="h2", cacert_chain_file=C.ca.cert_path)])
        self.assertEqual(p.returncode, 0, p.stderr)

    # ------------------------------------------------------------ files

    def test_missing_certificate_file(self):
        missing = os.path.join(self.dir, "nope.pem")
        p = self.validate([tls_context("missing-cert", hosts=["localhost"], cert_chain_file=missing,
                                       private_key_file=C.server.key_path, alpn_protocols="h2")])
        self.assertRefused(p, "missing-cert", "cert_chain_file", "nope.pem")

    def test_missing_ca_file(self):
        missing = os.path.join(self.dir, "no-ca.pem")
        p = self.validate([tls_context("upstream", alpn_protocols="h2", cacert_chain_file=missing)])
        self.assertRefused(p, "upstream", "cacert_chain_file", "no-ca.pem")

    # ------------------------------------------------------------ TLSContext settings C checks

    def test_cipher_suites_in_openssl_mbedtls_and_boringssl_spelling(self):
        p = self.validate([tls_context("ciphers", hosts=["localhost"], cert_chain_file=C.server.cert_path,
                                       private_key_file=C.server.key_path, alpn_protocols="h2",
                                       cipher_suites=["ECDHE-ECDSA-AES128-GCM-SHA256",
                                                      "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
                                                      "[ECDHE-ECDSA-CHACHA20-POLY1305|ECDHE-RSA-AES128-GCM-SHA256]"])])
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_unknown_cipher_suite(self):
        p = self.validate([tls_context("ciphers", hosts=["localhost"], cert_chain_file=C.server.cert_path,
                                       private_key_file=C.server.key_path, alpn_protocols="h2",
                                       cipher_suites=["ECDHE-ECDSA-AES128-GCM-SHA256", "NOT-A-CIPHER"])])
        self.assertRefused(p, "ciphers", "cipher_suites", "NOT-A-CIPHER")

    def test_ecdh_curves_in_openssl_and_mbedtls_spelling(self):
        p = self.validate([tls_context("curves", hosts=["localhost"], cert_chain_file=C.server.cert_path,
                                       private_key_file=C.server.key_path, alpn_protocols="h2",
                                       ecdh_curves=["X25519", "prime256v1", "secp384r1", "P-521", "x448"])])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn("ecdh_curves", p.stderr)  # no "not implemented" warning any more

    def test_unknown_ecdh_curve(self):
        p = self.validate([tls_context("curves", hosts=["localhost"], cert_chain_file=C.server.cert_path,
                                       private_key_file=C.server.key_path, alpn_protocols="h2",
                                       ecdh_curves=["X25519", "P-999"])])
        self.assertRefused(p, "curves", "ecdh_curves", "P-999")

    def test_cert_required_without_a_ca(self):
        p = self.validate([tls_context("mtls", hosts=["localhost"], cert_chain_file=C.server.cert_path,
                                       private_key_file=C.server.key_path, cert_required=True)])
        self.assertRefused(p, "mtls", "cert_required", "CA")

    def test_key_that_does_not_match_its_certificate(self):
        p = self.validate([tls_context("mismatch", hosts=["localhost"], cert_chain_file=C.server.cert_path,
                                       private_key_file=C.other.key_path, alpn_protocols="h2")])
        self.assertRefused(p, "mismatch", "does not match")

    def test_client_certificate_key_mismatch_for_origination(self):
        p = self.validate([tls_context("upstream-client", alpn_protocols="h2", cacert_chain_file=C.ca.cert_path,
                                       cert_chain_file=C.client.cert_path, private_key_file=C.other.key_path),
                           mapping("tls-up", "/tls.Greeter/", "https://127.0.0.1:50052",
                                   rewrite="/helloworld.Greeter/", tls="upstream-client")])
        self.assertRefused(p, "does not match")
        self.assertRegex(p.stderr, r"upstream-client|tls-up", "the TLSContext or the Mapping should be named")

    # ------------------------------------------------------------ Secrets

    def host_with(self, secret_doc):
        return [secret_doc, host("localhost", "localhost", tls_secret=secret_doc["metadata"]["name"],
                                 insecure="Redirect")]

    def test_secret_not_base64(self):
        p = self.validate(self.host_with(secret("garbled", crt_b64="this is not base64!",
                                                key_b64=C.server.key_b64)))
        self.assertRefused(p, "garbled", "tls.crt", "base64")

    def test_secret_base64_but_not_pem(self):
        p = self.validate(self.host_with(secret("not-pem", crt_b64=b64("just some text\n"),
                                                key_b64=C.server.key_b64)))
        self.assertRefused(p, "not-pem", "tls.crt", "PEM")

    def test_secret_key_not_base64(self):
        p = self.validate(self.host_with(secret("garbled-key", crt_b64=C.server.cert_b64, key_b64="%%%%")))
        self.assertRefused(p, "garbled-key", "tls.key", "base64")

    def test_secret_with_a_broken_certificate(self):
        # PEM armour, no certificate inside: only mbedTLS can tell; the error still
        # points at the resource that uses it.
        p = self.validate(self.host_with(secret("broken", crt_b64=b64(BROKEN_PEM_CERT), key_b64=C.server.key_b64)))
        line = self.assertRefused(p, "certificate")
        self.assertRegex(line, r"localhost|broken", "the Host or the Secret should be named")

    def test_secret_key_that_does_not_match(self):
        p = self.validate(self.host_with(secret("bad-pair", C.server.cert_pem, C.other.key_pem)))
        line = self.assertRefused(p, "does not match")
        self.assertRegex(line, r"localhost|bad-pair", "the Host or the Secret should be named")

    def test_host_naming_a_missing_secret(self):
        p = self.validate([host("localhost", "localhost", tls_secret="nowhere", insecure="Redirect")])
        self.assertRefused(p, "localhost", "tlsSecret", "nowhere")

    # ------------------------------------------------------------ starting for real

    def test_start_with_a_missing_certificate_exits_1_without_serving(self):
        admin_port = free_port()
        path = self.write_config([tls_context("missing-cert", hosts=["localhost"],
                                              cert_chain_file=os.path.join(self.dir, "nope.pem"),
                                              private_key_file=C.server.key_path)], admin_port=admin_port)
        p = self.run_nuncio("-c", path)
        self.assertRefused(p, "missing-cert", "nope.pem")
        self.assertFalse(port_accepts(self.port))
        self.assertFalse(port_accepts(admin_port))

    # ------------------------------------------------------------ the example

    def test_example_config_validates(self):
        # examples/grpc-greeter-tls: its make_certs.sh into a scratch folder next to
        # copies of its nuncio.yaml and ambassador.yaml (whose paths are relative).
        for name in ("nuncio.yaml", "ambassador.yaml", "make_certs.sh"):
            self.assertTrue(os.path.exists(os.path.join(EXAMPLE, name)), "examples/grpc-greeter-tls/%s" % name)
        for name in ("nuncio.yaml", "ambassador.yaml"):
            shutil.copy(os.path.join(EXAMPLE, name), os.path.join(self.dir, name))
        mk = subprocess.run(["bash", os.path.join(EXAMPLE, "make_certs.sh"), os.path.join(self.dir, "certs")],
                            capture_output=True, text=True, timeout=60)
        self.assertEqual(mk.returncode, 0, mk.stdout + mk.stderr)
        p = self.run_nuncio("-t", "-c", os.path.join(self.dir, "nuncio.yaml"))
        self.assertEqual(p.returncode, 0, "--- stdout:\n%s\n--- stderr:\n%s" % (p.stdout, p.stderr))


if __name__ == "__main__":
    unittest.main(verbosity=2)
