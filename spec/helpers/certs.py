"""Test certificates for nuncio's TLS specs, made with the `openssl` command.

    from certs import make_certs, certs
    c = certs()            # made once per process in a temp dir (removed at exit)
    c.ca.cert_path, c.server.key_pem, c.server.cert_b64, ...

Every key is EC P-256 and every signature ECDSA with SHA-256: both mbedTLS 2.28
and grpcio's BoringSSL take them. What is made (valid from now for 30 days):

  ca        "nuncio test CA"                 CA, signs everything below but wrong_*
  server    CN localhost, SAN DNS:localhost, DNS:api.example.com   (serverAuth)
  other     CN other.example.com, SAN DNS:other.example.com        (serverAuth)
  upstream  CN localhost, SAN DNS:localhost, IP:127.0.0.1          (serverAuth)
  client    CN nuncio-test-client                                  (clientAuth)
  wrong_ca  "nuncio unrelated CA": an unrelated CA, for the wrong-CA cases
  wrong_client  CN nuncio-stranger, a client cert signed by wrong_ca

Each entry has key_path, cert_path, key_pem, cert_pem (bytes), key_b64,
cert_b64 (str: base64 of the PEM, as a Kubernetes Secret's data holds it),
and subject (the `openssl x509 -subject` line, e.g. "subject=CN = localhost").

Run as a script to make a set into a folder: `certs.py OUTDIR`.
"""
import atexit
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import types

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
DAYS = 30

# name: (subject CN, the CA that signs it or None for a self-signed CA, extensions)
_LEAF_EXT = "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n" \
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
_CA_EXT = "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n" \
          "subjectKeyIdentifier = hash\n"
SPECS = [
    ("ca", "nuncio test CA", None, _CA_EXT),
    ("wrong_ca", "nuncio unrelated CA", None, _CA_EXT),
    ("server", "localhost", "ca", _LEAF_EXT + "extendedKeyUsage = serverAuth\n"
     "subjectAltName = DNS:localhost, DNS:api.example.com\n"),
    ("other", "other.example.com", "ca", _LEAF_EXT + "extendedKeyUsage = serverAuth\n"
     "subjectAltName = DNS:other.example.com\n"),
    ("upstream", "localhost", "ca", _LEAF_EXT + "extendedKeyUsage = serverAuth\n"
     "subjectAltName = DNS:localhost, IP:127.0.0.1\n"),
    ("client", "nuncio-test-client", "ca", _LEAF_EXT + "extendedKeyUsage = clientAuth\n"),
    ("wrong_client", "nuncio-stranger", "wrong_ca", _LEAF_EXT + "extendedKeyUsage = clientAuth\n"),
]


def openssl(*args, stdin=None):
    """Runs `openssl args...`; raises with its stderr on failure; returns stdout (bytes)."""
    p = subprocess.run([OPENSSL] + list(args), input=stdin, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed (exit %d):\n%s" % (" ".join(args), p.returncode,
                                                                p.stderr.decode("utf-8", "replace")))
    return p.stdout


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _entry(out, name):
    key_path, cert_path = os.path.join(out, name + ".key"), os.path.join(out, name + ".pem")
    with open(key_path, "rb") as f:
        key_pem = f.read()
    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    subject = openssl("x509", "-noout", "-subject", "-in", cert_path).decode().strip()
    return types.SimpleNamespace(name=name, key_path=key_path, cert_path=cert_path, key_pem=key_pem,
                                 cert_pem=cert_pem, key_b64=_b64(key_pem), cert_b64=_b64(cert_pem),
                                 subject=subject)


def make_certs(out):
    """Makes every certificate of SPECS into folder `out` (created if needed);
    returns a namespace with one entry per name plus `dir`."""
    os.makedirs(out, exist_ok=True)
    for serial, (name, cn, issuer, ext) in enumerate(SPECS, start=1):
        key = os.path.join(out, name + ".key")
        cert = os.path.join(out, name + ".pem")
        ext_path = os.path.join(out, name + ".ext")
        with open(ext_path, "w") as f:
            f.write("[v3]\n" + ext)
        # EC P-256 key (PKCS#8 PEM)
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
        if issuer is None:
            openssl("req", "-x509", "-new", "-sha256", "-key", key, "-subj", "/CN=" + cn, "-days", str(DAYS),
                    "-set_serial", str(1000 + serial), "-config", ext_path, "-extensions", "v3",
                    "-out", cert)
        else:
            csr = os.path.join(out, name + ".csr")
            openssl("req", "-new", "-sha256", "-key", key, "-subj", "/CN=" + cn, "-out", csr)
            openssl("x509", "-req", "-sha256", "-in", csr, "-CA", os.path.join(out, issuer + ".pem"),
                    "-CAkey", os.path.join(out, issuer + ".key"), "-set_serial", str(1000 + serial),
                    "-days", str(DAYS), "-extfile", ext_path, "-extensions", "v3", "-out", cert)
            os.unlink(csr)
        os.unlink(ext_path)
    ns = types.SimpleNamespace(dir=out)
    for name, _, _, _ in SPECS:
        setattr(ns, name, _entry(out, name))
    return ns


_certs = None
_lock = threading.Lock()


def certs():
    """The one set of certificates of this process (made on first use)."""
    global _certs
    with _lock:
        if _certs is None:
            out = tempfile.mkdtemp(prefix="nuncio-certs-")
            atexit.register(shutil.rmtree, out, True)
            _certs = make_certs(out)
    return _certs


def cert_text(pem):
    """`openssl x509 -noout -subject -ext subjectAltName` of a PEM certificate (str)."""
    return openssl("x509", "-noout", "-subject", "-ext", "subjectAltName", stdin=pem).decode()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: certs.py OUTDIR")
    made = make_certs(sys.argv[1])
    for name, _, _, _ in SPECS:
        e = getattr(made, name)
        print("%-13s %s  %s" % (name, e.cert_path, e.subject))
