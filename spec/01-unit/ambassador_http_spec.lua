-- nuncio.ambassador, issue 4: query parameters, weights, header rewrites, the Module's
-- defaults, linkerd headers, connection-manager settings (model.http), lua_scripts and
-- $NAME expansion (reference/ambassador-behaviour.md §0, §1.6-§1.9, §5).
local amb = require("nuncio.ambassador")
local format = require("nuncio.ambassador.format")
local header_rewrite = require("nuncio.header_rewrite")
local ffi = require("ffi")
pcall(ffi.cdef, "int setenv(const char *name, const char *value, int overwrite); int unsetenv(const char *name);")

local fixtures = require("ambassador_fixtures")
local load = fixtures.load

-- one v3alpha1 resource; body lines go under spec: (the first body line is line 7)
local doc = fixtures.doc

local LISTENER = fixtures.LISTENER

local mapping = fixtures.mapping

local module, ok, errors_of = fixtures.module, fixtures.ok, fixtures.errors_of

local route = fixtures.route

describe("nuncio.ambassador (issue 4)", function()
  describe("query parameters", function()
    it("reads exact, presence and regex parameters, names kept as written", function()
      local model, warns = ok(mapping("q", { "query_parameters: {Page: '2', debug: true}",
        "regex_query_parameters: {id: '^[0-9]+$'}" }))
      assert.same({}, warns)
      assert.same({
        { name = "Page", value = "2", regex = false },
        { name = "debug", value = true, regex = false },
        { name = "id", value = "^[0-9]+$", regex = true },
      }, route(model, "q").query)
    end)

    it("refuses values that are not strings", function()
      assert.same({ "t.yaml:10: Mapping q: query_parameters.page: must be a string (or true: the parameter is "
        .. "present), not number 2 (quote it)" }, errors_of(mapping("q", { "query_parameters: {page: 2}" })))
      assert.same({ "t.yaml:10: Mapping q: regex_query_parameters.id: must be a string, not boolean true" },
        errors_of(mapping("q", { "regex_query_parameters: {id: true}" })))
    end)

    it("counts them in the route order after the headers, as Emissary's _route_weight", function()
      local model = ok(mapping("a", {}) .. doc("Mapping", "b", { 'hostname: "*"', "prefix: /a/", "service: b",
        "query_parameters: {x: y}" }))
      assert.equal("b", model.routes[1].name) -- same prefix, b has a query constraint
    end)
  end)

  describe("header rewrites", function()
    it("reads scalar (append) and {value, append} (replace) additions in file order", function()
      local model, warns = ok(mapping("m", { "add_request_headers:", "    X-Zeta: one",
        "    x-alpha: {value: two, append: false}", "    x-num: 5",
        "add_response_headers: {x-r: '%PROTOCOL%'}",
        "remove_request_headers: X-Evil", "remove_response_headers: [server-timing, x-b]",
        "host_rewrite: backend.internal" }))
      assert.same({}, warns)
      local r = route(model, "m")
      assert.same({
        { name = "x-zeta", value = "one", append = true },
        { name = "x-alpha", value = "two", append = false },
        { name = "x-num", value = "5", append = true },
      }, r.request_headers_to_add)
      assert.same({ { name = "x-r", value = "%PROTOCOL%", append = true } }, r.response_headers_to_add)
      assert.same({ "x-evil" }, r.request_headers_to_remove)
      assert.same({ "server-timing", "x-b" }, r.response_headers_to_remove)
      assert.equal("backend.internal", r.host_rewrite)
    end)

    it("warns about %…% variables it does not know, and sends them as written", function()
      local _, warns = ok(mapping("m", { "add_request_headers: {x-a: '%FOO_BAR% %REQ(x-b)%'}" }))
      assert.same({ "t.yaml:10: Mapping m: add_request_headers.x-a: unknown %FOO_BAR%: sent as written (nuncio "
        .. "fills in %DOWNSTREAM_REMOTE_ADDRESS%, %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, %PROTOCOL%, "
        .. "%REQ(name)%, %UPSTREAM_CLUSTER%, ...)" }, warns)
    end)

    it("refuses malformed additions with their line", function()
      local errs = errors_of(mapping("m", { "add_request_headers:", "    x-a: {append: false}", "    x-b: true",
        "    x-c: {value: [1], append: maybe}" }))
      assert.same({
        "t.yaml:11: Mapping m: add_request_headers.x-a.value: required",
        "t.yaml:12: Mapping m: add_request_headers.x-b: must be a string or {value, append}, not boolean true "
          .. "(quote it)",
        "t.yaml:13: Mapping m: add_request_headers.x-c.value: must be a string, not a list",
        "t.yaml:13: Mapping m: add_request_headers.x-c.append: must be true or false, not the string \"maybe\"",
      }, errs)
    end)

    it("takes the Module's defaults.httpmapping unless the Mapping says otherwise ({} and [] included)", function()
      local model = ok(module({ "defaults:", "  httpmapping:",
        "    add_request_headers: {fruit: {append: false, value: orange}}",
        "    remove_request_headers: [x-evil-header]",
        "  add_response_headers: {x-top: level}" })
        .. mapping("plain") .. mapping("own", { "add_request_headers: {fruit: {append: false, value: banana}}",
          "remove_request_headers: [x-evilness]" })
        .. mapping("none", { "add_request_headers: {}", "remove_request_headers: []", "add_response_headers: {}" }))
      local plain, own, none = route(model, "plain"), route(model, "own"), route(model, "none")
      assert.same({ { name = "fruit", value = "orange", append = false } }, plain.request_headers_to_add)
      assert.same({ "x-evil-header" }, plain.request_headers_to_remove)
      -- defaults.KEY is the fallback when defaults.httpmapping has no KEY
      assert.same({ { name = "x-top", value = "level", append = true } }, plain.response_headers_to_add)
      assert.same({ { name = "fruit", value = "banana", append = false } }, own.request_headers_to_add)
      assert.same({ "x-evilness" }, own.request_headers_to_remove)
      assert.is_nil(none.request_headers_to_add)
      assert.is_nil(none.request_headers_to_remove)
      assert.is_nil(none.response_headers_to_add)
    end)

    it("adds l5d-dst-override: <service host>:<port> with add_linkerd_headers (Module or Mapping)", function()
      local model = ok(module({ "add_linkerd_headers: true" })
        .. mapping("a", { "service: target.default.svc.cluster.local" })
        .. mapping("b", { "service: b.ns:8080" })
        .. mapping("c", { "add_linkerd_headers: false" })
        .. mapping("d", { "service: https://secure" }))
      assert.same({ { name = "l5d-dst-override", value = "target.default.svc.cluster.local:80", append = true } },
        route(model, "a").request_headers_to_add)
      assert.same({ { name = "l5d-dst-override", value = "b.ns:8080", append = true } },
        route(model, "b").request_headers_to_add)
      assert.is_nil(route(model, "c").request_headers_to_add)
      assert.equal("secure:443", route(model, "d").request_headers_to_add[1].value)
      model = ok(mapping("e", { "add_linkerd_headers: true" }))
      assert.equal("e:80", route(model, "e").request_headers_to_add[1].value)
    end)

    it("merges the rewrites of a canary group, as Emissary's mapping group does", function()
      local body = { 'hostname: "*"', "prefix: /same/", "service: one" }
      local model = ok(doc("Mapping", "one", { 'hostname: "*"', "prefix: /same/", "service: one", "weight: 10",
        "add_request_headers: {x-a: '1', x-b: '1'}", "remove_response_headers: [x-gone]" })
        .. doc("Mapping", "two", { 'hostname: "*"', "prefix: /same/", "service: two",
          "add_request_headers: {x-b: '2', x-c: '2'}" }))
      assert.is_table(body)
      for _, name in ipairs({ "one", "two" }) do
        local r = route(model, name)
        assert.same({
          { name = "x-a", value = "1", append = true },
          { name = "x-b", value = "2", append = true },
          { name = "x-c", value = "2", append = true },
        }, r.request_headers_to_add)
        assert.same({ "x-gone" }, r.response_headers_to_remove)
      end
    end)
  end)

  describe("Module", function()
    it("fills model.http from the Module, Emissary's defaults otherwise", function()
      local model = ok(mapping("a"))
      assert.same({ strip_matching_host_port = false, merge_slashes = false,
        reject_requests_with_escaped_slashes = false, preserve_external_request_id = false,
        server_name = "envoy", listener_idle_timeout_ms = 3600000, enable_http10 = false,
        enable_grpc_web = false, enable_grpc_http11_bridge = false }, model.http)
      model = ok(module({ "strip_matching_host_port: true", "merge_slashes: true",
        "reject_requests_with_escaped_slashes: true", "preserve_external_request_id: true",
        "server_name: edge-1", "listener_idle_timeout_ms: 300", "enable_http10: true" }) .. mapping("a"))
      assert.same({ strip_matching_host_port = true, merge_slashes = true,
        reject_requests_with_escaped_slashes = true, preserve_external_request_id = true,
        server_name = "edge-1", listener_idle_timeout_ms = 300, enable_http10 = true,
        enable_grpc_web = false, enable_grpc_http11_bridge = false }, model.http)
    end)

    it("turns gRPC-Web on when enable_grpc_web is present, even as false (as Emissary)", function()
      assert.is_true(ok(module({ "enable_grpc_web: true" }) .. mapping("a")).http.enable_grpc_web)
      assert.is_true(ok(module({ "enable_grpc_web: false" }) .. mapping("a")).http.enable_grpc_web)
      assert.is_false(ok(module({ "merge_slashes: true" }) .. mapping("a")).http.enable_grpc_web)
    end)

    it("refuses settings of the wrong type", function()
      assert.same({ 't.yaml:8: Module ambassador: config.merge_slashes: must be true or false, not the string "yes please"' },
        errors_of(module({ 'merge_slashes: "yes please"' })))
    end)

    it("warns about defaults it does not apply", function()
      local _, warns = ok(module({ "defaults:", "  httpmapping: {stats_name: x, frob: 1}", "  tcpmapping: {}" }))
      assert.same({
        "t.yaml:9: Module ambassador: config.defaults.httpmapping.frob: unknown field, ignored",
        "t.yaml:9: Module ambassador: config.defaults.httpmapping.stats_name: not implemented yet, ignored",
        "t.yaml:10: Module ambassador: config.defaults.tcpmapping: not implemented yet, ignored",
      }, warns)
    end)
  end)

  describe("lua_scripts and $NAME", function()
    after_each(function()
      ffi.C.unsetenv("NUNCIO_SPEC_VALUE")
    end)

    it("expands $NAME and ${NAME} in Module strings from the environment", function()
      ffi.C.setenv("NUNCIO_SPEC_VALUE", "Processed", 1)
      local model, warns = ok(module({ "lua_scripts: |",
        "  function envoy_on_response(response_handle)",
        '    response_handle: headers():add("Lua-Scripts-Enabled", "$NUNCIO_SPEC_VALUE")',
        "  end",
        'server_name: "${NUNCIO_SPEC_VALUE}-$NUNCIO_SPEC_VALUE}"',
        "defaults: {httpmapping: {add_request_headers: {x-env: $NUNCIO_SPEC_VALUE}}}" }) .. mapping("a"))
      assert.same({}, warns)
      assert.matches('add("Lua-Scripts-Enabled", "Processed")', model.http.lua_scripts.code, 1, true)
      assert.equal("Processed-Processed}", model.http.server_name)
      assert.equal("Processed", route(model, "a").request_headers_to_add[1].value)
      assert.equal("t.yaml:8: Module ambassador: config.lua_scripts", model.http.lua_scripts.where)
    end)

    it("expands an unset variable to an empty string, with a warning", function()
      local model, warns = ok(module({ "server_name: 'a$NUNCIO_SPEC_VALUE-b'", "lua_scripts: 'x = \"${NOPE\"'" }))
      assert.equal("a-b", model.http.server_name)
      assert.equal('x = "${NOPE"', model.http.lua_scripts.code) -- no closing brace: left alone
      assert.same({ "t.yaml:8: Module ambassador: config.server_name: $NUNCIO_SPEC_VALUE is not set in the "
        .. "environment: replaced by an empty string" }, warns)
    end)

    it("reports a script that does not compile at the script's line in the file", function()
      assert.same({ "t.yaml:10: Module ambassador: config.lua_scripts: does not compile: line 2 of the script: "
        .. "'=' expected near 'is'" }, errors_of(module({ "lua_scripts: |", "  function envoy_on_request(h)",
        "    this is oops", "  end" })))
      -- a quoted one-line script: the key's line
      assert.same({ "t.yaml:8: Module ambassador: config.lua_scripts: does not compile: line 1 of the script: "
        .. "unexpected symbol near 'return'" }, errors_of(module({ "lua_scripts: 'x = return'" })))
    end)
  end)

  describe("%…% variables", function()
    it("knows what nuncio.header_rewrite implements, and nothing more", function()
      for name in pairs(format.KNOWN) do
        assert.is_truthy(header_rewrite.DYNAMIC[name] or header_rewrite.STATIC[name], name)
      end
      for name in pairs(header_rewrite.DYNAMIC) do
        assert.is_true(format.KNOWN[name], name)
      end
    end)

    it("tokenizes literals, %%, headers and variables", function()
      local tokens, unknown = format.tokenize("a%%b %REQ(X-A?x-b):3% %PROTOCOL% %NOPE% %RESP(y)% 50%", "request")
      assert.same({ "a%b ", { header = "REQ", main = "x-a", alt = "x-b", maxlen = 3 }, " ",
        { var = "PROTOCOL" }, " %NOPE% %RESP(y)% 50%" }, tokens)
      assert.same({ "%NOPE%", "%RESP(y)%", "%" }, unknown)
      tokens = format.tokenize("%RESP(y)%", "response")
      assert.same({ { header = "RESP", main = "y" } }, tokens)
    end)
  end)
end)
