-- Emissary's own acceptance tests (KAT, python/tests/kat/) for host matching, port
-- stripping, slashes, Linkerd headers and lua_scripts, replayed through nuncio.testing with
-- their configuration as written there (reference/ambassador-behaviour.md §9). "200" in
-- KAT means the request reached the upstream: here, a route and no local reply.
local testing = require("nuncio.testing")
local ffi = require("ffi")
pcall(ffi.cdef, "int setenv(const char *name, const char *value, int overwrite); int unsetenv(const char *name);")

local function routed(r)
  return r.reply == nil and r.route ~= nil
end

-- KAT's "no Host header": the request's own authority, the Ambassador service's name
local NO_HOST = "ambassador.default"

describe("Emissary KAT cases", function()
  it("t_mappingtests_plain.py HostHeaderMapping: the port is part of the host", function()
    local chain = testing.chain({ ambassador = [[
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
name: hostheadermapping
prefix: /hostheadermapping/
service: http://hostheadermapping-http
host: inspector.external
]], local_port = 8080 })
    do
      local function get(authority)
        return chain:request({ path = "/hostheadermapping/", authority = authority })
      end
      assert.equal(404, get(NO_HOST).reply.status)
      assert.equal(404, get("inspector.internal").reply.status)
      assert.is_true(routed(get("inspector.external")))
      assert.equal(404, get("inspector.external:8080").reply.status)
    end
  end)

  it("t_mappingtests_default.py HostHeaderMappingStripMatchingHostPort", function()
    local chain = testing.chain({ ambassador = [[
---
apiVersion: getambassador.io/v3alpha1
kind:  Module
name:  ambassador
config:
  strip_matching_host_port: true
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
name:  hostheadermappingstripmatchinghostport
prefix: /hostheadermappingstripmatchinghostport/
service: http://hostheadermappingstripmatchinghostport-http
host: myhostname.com
]], local_port = 8080 })
    do
      local function get(authority)
        return chain:request({ path = "/hostheadermappingstripmatchinghostport/", authority = authority })
      end
      assert.equal(404, get(NO_HOST).reply.status)
      assert.equal(404, get("yourhostname.com").reply.status)
      assert.is_true(routed(get("myhostname.com")))
      local stripped = get("myhostname.com:8080")
      assert.is_true(routed(stripped))
      assert.equal("myhostname.com", stripped.authority)
      assert.equal(404, get("myhostname.com:11875").reply.status)
    end
  end)

  local SLASHES = [[
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
name:  mergeslashes
hostname: "*"
prefix: /mergeslashes/status/
rewrite: /status/
service: httpbin.default
]]

  it("t_mappingtests_default.py MergeSlashesDisabled", function()
    local chain = testing.chain({ ambassador = SLASHES })
    local ok = chain:request({ path = "/mergeslashes/status/200" })
    assert.is_true(routed(ok))
    assert.equal("/status/200", ok.path)
    assert.equal(404, chain:request({ path = "//mergeslashes/status/200" }).reply.status)
    assert.equal(404, chain:request({ path = "//mergeslashes//status/200" }).reply.status)
    assert.equal(404, chain:request({ path = "/mergeslashes//status/200" }).reply.status)
  end)

  it("t_mappingtests_default.py MergeSlashesEnabled", function()
    local chain = testing.chain({ ambassador = [[
---
apiVersion: getambassador.io/v3alpha1
kind:  Module
name:  ambassador
config:
  merge_slashes: true
]] .. SLASHES })
    for _, path in ipairs({ "/mergeslashes/status/200", "//mergeslashes/status/200", "//mergeslashes//status/200",
      "/mergeslashes//status/200" }) do
      local r = chain:request({ path = path })
      assert.is_true(routed(r), path)
      assert.equal("/status/200", r.path, path) -- what httpbin gets
    end
  end)

  it("t_mappingtests_default.py RejectRequestsWithEscapedSlashesDisabled: routed, the upstream says 404", function()
    local chain = testing.chain({ ambassador = SLASHES })
    local r = chain:request({ path = "/mergeslashes/status/%2F200" })
    assert.is_true(routed(r))
    assert.equal("/status/%2F200", r.path)
  end)

  it("t_mappingtests_default.py RejectRequestsWithEscapedSlashesEnabled: 400 from the proxy", function()
    local chain = testing.chain({ ambassador = [[
---
apiVersion: getambassador.io/v3alpha1
kind:  Module
name:  ambassador
config:
  reject_requests_with_escaped_slashes: true
]] .. SLASHES })
    local r = chain:request({ path = "/mergeslashes/status/%2F200" })
    assert.equal(400, r.reply.status)
    assert.is_nil(r.cluster) -- never reached the upstream
  end)

  it("t_mappingtests_default.py LinkerdHeaderMapping", function()
    local chain = testing.chain({ ambassador = [[
---
apiVersion: getambassador.io/v3alpha1
kind:  Module
name:  ambassador
config:
  add_linkerd_headers: true
  defaults:
    httpmapping:
        add_request_headers:
            fruit:
                append: False
                value: orange
        remove_request_headers:
        - x-evil-header
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
name: linkerdheadermapping-addlinkerdonly
hostname: "*"
prefix: /target_add_linkerd_header_only/
service: addlinkerdonly.default.svc.cluster.local
add_request_headers: {}
remove_request_headers: []
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
name: linkerdheadermapping-noheader
hostname: "*"
prefix: /target_no_header/
service: noheader.default.svc.cluster.local
add_linkerd_headers: false
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
name: linkerdheadermapping-http
hostname: "*"
prefix: /target/
service: target.default.svc.cluster.local
add_request_headers:
    fruit:
        append: False
        value: banana
remove_request_headers:
- x-evilness
]] })
    local evil = { ["x-evil-header"] = "evilness", ["x-evilness"] = "more evilness" }
    local function get(path)
      local r = chain:request({ path = path, headers = evil })
      assert.is_true(routed(r), path)
      return r.stream.request
    end
    -- [0] Linkerd header and the Mapping's own fruit; only the Mapping's removal list applies
    local h = get("/target/")
    assert.same({ "target.default.svc.cluster.local:80" }, h:get_all("l5d-dst-override"))
    assert.same({ "banana" }, h:get_all("fruit"))
    assert.same({ "evilness" }, h:get_all("x-evil-header"))
    assert.same({}, h:get_all("x-evilness"))
    -- [1] no Linkerd header; the Module's defaults
    h = get("/target_no_header/")
    assert.same({}, h:get_all("l5d-dst-override"))
    assert.same({ "orange" }, h:get_all("fruit"))
    assert.same({}, h:get_all("x-evil-header"))
    assert.same({ "more evilness" }, h:get_all("x-evilness"))
    -- [2] {} and [] turn the defaults off; the Linkerd header stays
    h = get("/target_add_linkerd_header_only/")
    assert.same({ "addlinkerdonly.default.svc.cluster.local:80" }, h:get_all("l5d-dst-override"))
    assert.same({}, h:get_all("fruit"))
    assert.same({ "evilness" }, h:get_all("x-evil-header"))
    assert.same({ "more evilness" }, h:get_all("x-evilness"))
  end)

  describe("with the bundled envoy_scripts filter", function()

    after_each(function()
      ffi.C.unsetenv("LUA_SCRIPTS_ENABLED")
    end)

    it("t_lua_scripts.py LuaTest: $LUA_SCRIPTS_ENABLED expanded, the response header added", function()
      ffi.C.setenv("LUA_SCRIPTS_ENABLED", "Processed", 1)
      local chain, warns = testing.chain({ ambassador = [[
---
apiVersion: getambassador.io/v2
kind: Module
metadata:
  name: ambassador
spec:
  ambassador_id: default
  config:
    lua_scripts: |
      function envoy_on_response(response_handle)
        response_handle: headers():add("Lua-Scripts-Enabled", "$LUA_SCRIPTS_ENABLED")
      end
---
apiVersion: getambassador.io/v2
kind: Mapping
metadata:
  name: lua-target-mapping
spec:
  ambassador_id: default
  prefix: /target/
  service: luatest-http.default
]] })
      for _, w in ipairs(warns) do
        assert.is_nil(w:find("LUA_SCRIPTS_ENABLED", 1, true), w)
      end
      local r = chain:request({ path = "/target/" })
      assert.is_true(routed(r))
      local resp = r:respond_upstream({ status = 200 })
      assert.is_nil(resp.error)
      assert.equal("Processed", resp.headers["lua-scripts-enabled"])
    end)

    it("the guide's port-stripping snippet, pasted verbatim, routes any port", function()
      local chain = testing.chain({ ambassador = require("ambassador_fixtures").guide_lua_module() .. [[
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: api}
spec:
  hostname: api.example.com
  prefix: /helloworld.Greeter/
  rewrite: ""
  grpc: true
  service: 127.0.0.1:50051
]] })
      for _, authority in ipairs({ "api.example.com:443", "api.example.com:8080", "api.example.com" }) do
        local r = chain:request({ path = "/helloworld.Greeter/SayHello", authority = authority, grpc = true })
        assert.is_true(routed(r), authority)
        assert.equal("api.example.com", r.authority)
      end
      assert.equal(12, chain:request({ path = "/helloworld.Greeter/SayHello", authority = "other:443", grpc = true })
        .reply.grpc_status)
    end)

    it("a script that does not compile is a config error at its line in the file", function()
      local ok, err = pcall(testing.chain, { ambassador = [[
---
apiVersion: getambassador.io/v3alpha1
kind: Module
metadata: {name: ambassador}
spec:
  config:
    lua_scripts: |
      function envoy_on_request(h)
        h:headers():add("x", "y"
      end
]] })
      assert.is_false(ok)
      assert.matches(":10: Module ambassador: config.lua_scripts: does not compile: line 3 of the script: ')' "
        .. "expected (to close '(' at line 2) near 'end'", err, 1, true)
    end)

    it("a script that fails when it starts is a config error at its line in the file", function()
      local ok, err = pcall(testing.chain, { ambassador = [[
---
apiVersion: getambassador.io/v3alpha1
kind: Module
metadata: {name: ambassador}
spec:
  config:
    lua_scripts: |
      local limit = 10
      error("no limit configured")
]] })
      assert.is_false(ok)
      assert.matches(":9: Module ambassador: config.lua_scripts: line 2 of the script: no limit configured", err, 1,
        true)
    end)
  end)
end)
