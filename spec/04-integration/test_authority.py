"""The guide's "Working with Host headers that include the port", with a real
grpcio client whose :authority carries a port, against a Mapping with
`hostname: api.example.com` (behaviour notes §1.5, §2.4, §5.1):

* as Envoy: the port is part of the match, so the call is UNIMPLEMENTED (404);
* Module strip_matching_host_port: routed when the port is the listener's own,
  still UNIMPLEMENTED for any other port;
* Module lua_scripts with the guide's snippet, pasted verbatim: routed for any port.

Run by ctest as `/usr/bin/python3 -m unittest -v test_authority` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import CALL_TIMEOUT, NuncioTestCase, mapping, stubs  # noqa: E402

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc

# From the Ambassador gRPC guide, byte for byte (the Module's config.lua_scripts).
GUIDE_SNIPPET = """function envoy_on_request(request_handle)
  local authority = request_handle:headers():get(":authority")
  if(string.find(authority, ":") ~= nil)
  then
    local authority_index = string.find(authority, ":")
    local stripped_authority = string.sub(authority, 1, authority_index - 1)
    request_handle:headers():replace(":authority", stripped_authority)
  end
end
"""


def module(config):
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "Module",
            "metadata": {"name": "ambassador"}, "spec": {"config": config}}


class AuthorityCase(NuncioTestCase):
    MODULE = None

    @classmethod
    def setUpClass(cls):
        if cls is AuthorityCase:
            raise unittest.SkipTest("base class")
        cls.up = cls.start_upstream()
        docs = [module(cls.MODULE)] if cls.MODULE else []
        cls.start_proxy([mapping("api", "/helloworld.Greeter/", cls.up.address, hostname="api.example.com")],
                        docs=docs)

    def call(self, authority):
        with self.proxy.channel(authority=authority) as channel:
            return hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name="port"), timeout=CALL_TIMEOUT)

    def assert_unimplemented(self, authority):
        with self.assertRaises(grpc.RpcError) as cm:
            self.call(authority)
        self.assertRpcCode(cm, grpc.StatusCode.UNIMPLEMENTED)


class PortIsPartOfTheMatchTest(AuthorityCase):

    def test_authority_without_port_is_routed(self):
        self.assertEqual(self.call("api.example.com").message, "Hello, port!")

    def test_authority_with_the_port_is_unimplemented_as_in_envoy(self):
        self.assert_unimplemented("api.example.com:%d" % self.proxy.port)
        self.assert_unimplemented("api.example.com:443")


class StripMatchingHostPortTest(AuthorityCase):
    MODULE = {"strip_matching_host_port": True}

    def test_the_listeners_own_port_is_stripped(self):
        self.assertEqual(self.call("api.example.com:%d" % self.proxy.port).message, "Hello, port!")

    def test_another_port_is_not_stripped(self):
        self.assert_unimplemented("api.example.com:443")


class ServerNameTest(AuthorityCase):
    MODULE = {"server_name": "edge-1"}

    def test_module_server_name_is_the_server_header(self):
        with self.proxy.channel(authority="api.example.com") as channel:
            reply, call = hw_grpc.GreeterStub(channel).SayHello.with_call(hw.HelloRequest(name="s"),
                                                                          timeout=CALL_TIMEOUT)
        self.assertEqual(dict(call.initial_metadata()).get("server"), "edge-1")
        # a local reply (no route) carries it too
        with self.proxy.channel(authority="other.example.com") as channel:
            with self.assertRaises(grpc.RpcError) as cm:
                hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name="s"), timeout=CALL_TIMEOUT)
        self.assertRpcCode(cm, grpc.StatusCode.UNIMPLEMENTED)
        # trailers-only: grpcio reports that single header block as trailing metadata
        md = dict(cm.exception.initial_metadata())
        md.update(dict(cm.exception.trailing_metadata()))
        self.assertEqual(md.get("server"), "edge-1")


class GuideLuaSnippetTest(AuthorityCase):
    MODULE = {"lua_scripts": GUIDE_SNIPPET}

    def test_any_port_is_stripped(self):
        for authority in ("api.example.com:443", "api.example.com:%d" % self.proxy.port, "api.example.com"):
            self.assertEqual(self.call(authority).message, "Hello, port!", authority)
        self.proxy.wait_stats(live_streams=0)


class FailingScriptTest(AuthorityCase):
    """A lua_scripts body that throws: as Envoy, the error is logged and counted
    and the request goes on (fail open)."""
    MODULE = {"lua_scripts": "function envoy_on_request(h)\n  error('script bug')\nend\n"}

    def test_a_throwing_script_fails_open_and_is_counted(self):
        before = self.proxy.stats().get("lua_errors", 0)
        self.assertEqual(self.call("api.example.com").message, "Hello, port!")
        self.assertEqual(self.call("api.example.com").message, "Hello, port!")
        self.assertEqual(self.proxy.stats()["lua_errors"], before + 2)
        self.assertIn("script bug", self.proxy_log())


import unittest  # noqa: E402

if __name__ == "__main__":
    unittest.main(verbosity=2)
