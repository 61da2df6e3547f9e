"""nuncio's HTTP/2 conformance spec (issue 9): RFC 9113 section by section, the
way the public h2spec suite is organised, against the downstream HTTP/2 codec
(csrc/h2s.c), with a real gRPC route behind it.

The cases live in spec/helpers/h2conformance.py (data + functions runnable
against any host:port: bench/h2spec_compare runs the same ones against nuncio,
nghttpx and nginx). Here every case runs on its own connection to one nuncio
started for this suite, with one gRPC Mapping ("/") to a grpcio Upstream that
records every call; one subTest per case, named by its section:
"6.5/1 Sends a SETTINGS frame with ACK flag and payload → FRAME_SIZE_ERROR (connection)".

What a case asserts (exactly; see the helper's docstring):
* connection error: GOAWAY with that code, then the connection closed;
* stream error: RST_STREAM with that code (never a connection error in its
  place, never an HTTP 400 alone), then a valid gRPC request on a new stream of
  the same connection gets 200 / grpc-status 0;
* a malformed request never reaches the upstream (its recorder saw no call
  with the request's x-case tag);
* frames the RFC says to ignore are ignored (PING still answered, requests
  still served).

After every case nuncio must still run; a case that kills it fails with the
log and the suite goes on with a new nuncio. At the end nuncio must have no
stream left and exit 0 (under ASan: no leak).

Run by ctest as `/usr/bin/python3 -m unittest -v test_h2_conformance` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
NUNCIO_H2_CASES="6.5 8.3.1/2" runs only those sections / cases.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from h2conformance import CONN_FOR_STREAM, PASS, FixtureUpstream, Target, run_case, select  # noqa: E402
from nuncio_fixture import NuncioTestCase, mapping  # noqa: E402


# Stream errors nuncio answers with a connection error of the same code (RFC 9113
# §5.4.1 allows it): nghttp2 decides these before the codec sees the frame.
# docs/conformance.md lists them beside nghttpx and nginx.
CONN_FOR_STREAM_KNOWN = {"5.1/5", "5.1/6", "6.1/2", "5.1.2/1", "5.3.1/1", "5.3.1/2", "6.3/2", "6.9/2"}


class H2ConformanceTest(NuncioTestCase):
    """RFC 9113 conformance of nuncio's downstream HTTP/2, case by case."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("h2-conformance", "/", cls.up.address)])

    def target(self):
        return Target("127.0.0.1", self.proxy.port, upstream=FixtureUpstream(self.up), name="nuncio")

    def test_rfc9113_cases(self):
        cases = select(os.environ.get("NUNCIO_H2_CASES", "").split())
        self.assertTrue(cases, "no case selected")
        for case in cases:
            with self.subTest(case.name):
                mark = self.proxy.log_size()
                result = run_case(case, self.target())
                died = not self.proxy.running()
                log = self.proxy.format_log(mark)
                if died:
                    # Report the crash on this case; the next cases get a new nuncio.
                    type(self).start_proxy([mapping("h2-conformance", "/", self.up.address)])
                    self.fail("%s [%s]: nuncio died (%s)%s" % (case.id, case.level, result.detail, log))
                if result.verdict == CONN_FOR_STREAM:
                    # RFC 9113 §5.4.1: "an endpoint MAY choose to treat a stream
                    # error as a connection error". nuncio does where nghttp2
                    # does (nghttpx the same); the exact list is pinned below,
                    # so a new case going that way fails here.
                    self.assertIn(case.id, CONN_FOR_STREAM_KNOWN,
                                  "%s [%s]: a connection error where the case wants a stream error, not in the "
                                  "known list: %s%s" % (case.id, case.level, result.detail, log))
                    continue
                self.assertEqual(result.verdict, PASS, "%s [%s]: %s%s" % (case.id, case.level, result.detail, log))


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
