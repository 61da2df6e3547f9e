-- nuncio.ambassador: Emissary resources -> model (docs/internals.md §2,
-- reference/ambassador-behaviour.md §0-§5)
local amb = require("nuncio.ambassador")
local mapping = require("nuncio.ambassador.mapping")

local FIX = "spec/fixtures/ambassador/"

local NO_LISTENER = "no Listener resource: Emissary itself would listen nowhere; nuncio defaults to "
  .. "0.0.0.0:8080 (protocol HTTP, securityModel XFP) like Ambassador's quick-start"

-- load_text + build_model, warnings of both steps together
local fixtures = require("ambassador_fixtures")
local load = fixtures.load

-- one v3alpha1 resource; body lines go under spec: (the first body line is line 7)
local doc = fixtures.doc

local LISTENER = fixtures.LISTENER

-- a Mapping with hostname "*" plus a Listener, so no default-related warnings
local function route_of(body, opts)
  local lines = { 'hostname: "*"' }
  for _, l in ipairs(body) do
    lines[#lines + 1] = l
  end
  local model, errs, warns = load(doc("Mapping", "m", lines) .. LISTENER, opts)
  assert.same({}, errs)
  assert.same({}, warns)
  return model.routes[1], model
end

local function error_of(body, kind)
  local model, errs = load(doc(kind or "Mapping", "m", body) .. LISTENER)
  assert.is_nil(model)
  assert.equal(1, #errs)
  return errs[1]
end

local function warnings_of(text)
  local model, errs, warns = load(text)
  assert.same({}, errs)
  assert.is_table(model)
  return warns, model
end

local contains = fixtures.contains

describe("nuncio.ambassador", function()
  describe("the gRPC greeter example", function()
    it("becomes exactly the model of the guide", function()
      local model, errs, warns = amb.load({ "examples/grpc-greeter/ambassador.yaml" })
      assert.same({}, errs)
      assert.same({}, warns)
      local file = "examples/grpc-greeter/ambassador.yaml"
      assert.same({
        listeners = { { name = "example-listener", namespace = "default", address = "0.0.0.0", port = 8080,
          protocol = "HTTP", tls = false, security_model = "XFP", l7_depth = 0, source = file .. ":31" } },
        hosts = { { name = "example-host", namespace = "default", hostname = "*", insecure_action = "Route",
          source = file .. ":20" } },
        clusters = { { name = "127_0_0_1_50051", host = "127.0.0.1", port = 50051, http2 = true, tls = false,
          connect_timeout_ms = 3000, lb = { policy = "round_robin" } } },
        policies = { { retry_on = {}, num_retries = 0, per_try_timeout_ms = 0, retriable_status_codes = {} } },
        routes = { {
          name = "grpc-py", namespace = "default", source = file .. ":7",
          prefix = "/helloworld.Greeter/", prefix_regex = false, prefix_exact = false, case_sensitive = true,
          rewrite = "/helloworld.Greeter/", host = { kind = "glob", value = "*" }, method_regex = false,
          headers = {}, query = {}, precedence = 0,
          grpc = true, cluster = 1, timeout_ms = 3000, hosts = { 1 }, policy = 1,
        } },
        module = {},
        http = { strip_matching_host_port = false, merge_slashes = false,
          reject_requests_with_escaped_slashes = false, preserve_external_request_id = false,
          server_name = "envoy", listener_idle_timeout_ms = 3600000, enable_http10 = false,
          enable_grpc_web = false, enable_grpc_http11_bridge = false },
        tls_contexts = {},
        -- what was read, in file order, for the diagnostics page
        resources = {
          { kind = "Mapping", name = "grpc-py", namespace = "default", source = file .. ":7",
            api_version = "getambassador.io/v3alpha1", ok = true },
          { kind = "Host", name = "example-host", namespace = "default", source = file .. ":20",
            api_version = "getambassador.io/v3alpha1", ok = true },
          { kind = "Listener", name = "example-listener", namespace = "default", source = file .. ":31",
            api_version = "getambassador.io/v3alpha1", ok = true },
        },
        -- no Module: Emissary's defaults
        diagnostics = { enabled = true, allow_non_local = false },
        -- no opts.admin: no internal Mappings, so routes and clusters are the user's alone
      }, model)
    end)
  end)

  describe("input forms", function()
    it("reads flat ambassador/v0, ambassador/v1 and getambassador.io/v1 documents", function()
      local model, errs, warns = amb.load(FIX .. "legacy-flat.yaml")
      assert.same({}, errs)
      assert.same({ NO_LISTENER }, warns)
      local names = {}
      for i, r in ipairs(model.routes) do
        names[i] = r.name
      end
      assert.same({ "grpc-old", "qotm", "crd-v1" }, names)
      local old = model.routes[1]
      assert.equal("", old.rewrite)
      assert.equal(0, old.timeout_ms)
      assert.same({ name = "greeter_50051", host = "greeter", port = 50051, http2 = true, tls = false,
        connect_timeout_ms = 3000, lb = { policy = "round_robin" } }, model.clusters[old.cluster])
      -- the flat Module's config applies: 5000 ms default timeout
      assert.equal(5000, model.routes[2].timeout_ms)
      assert.equal("/", model.routes[2].rewrite)
      assert.same({ cluster_request_timeout_ms = 5000 }, model.module)
      assert.equal(FIX .. "legacy-flat.yaml:3", model.routes[2].source)
    end)

    it("serves host-less v0..v2 Mappings on every Host, as Ambassador 1.x did", function()
      local model = amb.load(FIX .. "legacy-flat.yaml")
      for _, r in ipairs(model.routes) do
        assert.same({ 1 }, r.hosts)
        assert.is_nil(r.host)
      end
    end)

    it("reads a file whose top level is a list", function()
      local model, errs = amb.load(FIX .. "list.yaml")
      assert.same({}, errs)
      assert.equal(2, #model.routes)
      assert.equal("listed-b", model.routes[1].name)
      assert.equal(FIX .. "list.yaml:14", model.routes[1].source)
      assert.equal("listed-a", model.routes[2].name)
    end)

    it("reads a Kubernetes List, with the item's namespace", function()
      local model, errs, warns = amb.load(FIX .. "kind-list.yaml")
      assert.same({}, errs)
      assert.same({ NO_LISTENER }, warns)
      assert.equal(1, #model.routes)
      assert.equal("in-list", model.routes[1].name)
      assert.equal("shop", model.routes[1].namespace)
      -- an unqualified service in another namespace than Ambassador's gets ".shop"
      assert.equal("cart.shop", model.clusters[1].host)
    end)

    it("reads multi-document streams and skips empty documents", function()
      local model, errs = amb.load(FIX .. "multi.yaml")
      assert.same({}, errs)
      assert.equal(2, #model.routes)
      assert.equal(FIX .. "multi.yaml:16", model.routes[1].source)
      assert.equal(FIX .. "multi.yaml:5", model.routes[2].source)
    end)

    it("reads a Service's getambassador.io/config annotation, skipping other objects quietly", function()
      local model, errs, warns = amb.load(FIX .. "annotation.yaml")
      assert.same({}, errs)
      assert.same({ NO_LISTENER }, warns)
      assert.equal(2, #model.routes)
      local r = model.routes[1]
      assert.equal("greeter-mapping", r.name)
      assert.equal("demo", r.namespace)
      -- lines of a literal block annotation are lines of the file
      assert.equal(FIX .. "annotation.yaml:14", r.source)
      assert.equal("greeter.demo", model.clusters[r.cluster].host)
      assert.equal("web.elsewhere", model.clusters[model.routes[2].cluster].host)
    end)

    it("reports annotation problems with file lines and the Service's name", function()
      local model, errs = amb.load(FIX .. "annotation-errors.yaml")
      assert.is_nil(model)
      local f = FIX .. "annotation-errors.yaml"
      assert.same({
        f .. ":8: Mapping no-service: service: required "
          .. "(in the getambassador.io/config annotation of Service broken-svc)",
        f .. ":22: Service bad-yaml-svc: metadata.annotations.getambassador.io/config: "
          .. "did not find expected ',' or ']' (while parsing a flow sequence at line 21)",
        -- a quoted annotation has no file lines: the annotation's own line is given
        f .. ":28: Mapping q: prefix: required (in the getambassador.io/config annotation of Service quoted-svc)",
      }, errs)
    end)

    it("refuses an annotation that is not a string", function()
      local model, errs = load("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations:\n"
        .. "    getambassador.io/config: [1]\n")
      assert.is_nil(model)
      assert.same({ "t.yaml:6: Service s: metadata.annotations.getambassador.io/config: "
        .. "must be a string (a YAML document stream)" }, errs)
    end)

    it("skips objects that are not Ambassador resources without a word", function()
      local warns, model = warnings_of(table.concat({
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: plain}\n",
        "apiVersion: example.com/v1\nkind: Mapping\nmetadata: {name: m}\nspec: {prefix: /x/}\n",
        "just: a mapping\n",
        "- a list of\n- strings\n",
      }, "---\n"))
      assert.same({ NO_LISTENER }, warns)
      assert.same({}, model.routes)
    end)

    it("reads folders recursively, in sorted order, *.yaml and *.yml only", function()
      local resources, errs = amb.load_paths({ FIX .. "folder" })
      assert.same({}, errs)
      local sources = {}
      for i, r in ipairs(resources) do
        sources[i] = r.kind .. " " .. r.name .. " " .. r.source
      end
      assert.same({
        "Mapping folder-a " .. FIX .. "folder/a.yml:1",
        "Mapping folder-b " .. FIX .. "folder/b.yaml:1",
        "Host folder-host " .. FIX .. "folder/sub/c.yaml:1",
      }, sources)
    end)

    it("takes files and folders together, in the order given", function()
      local resources, errs = amb.load_paths({ FIX .. "multi.yaml", FIX .. "folder/sub" })
      assert.same({}, errs)
      assert.same({ "first", "second", "folder-host" },
        { resources[1].name, resources[2].name, resources[3].name })
    end)

    it("reports a missing file", function()
      local model, errs = amb.load({ FIX .. "does-not-exist.yaml" })
      assert.is_nil(model)
      assert.same({ FIX .. "does-not-exist.yaml: No such file or directory" }, errs)
    end)

    it("reports broken YAML with file, line and column", function()
      local model, errs = amb.load({ FIX .. "broken.yaml" })
      assert.is_nil(model)
      assert.same({ FIX .. "broken.yaml:7:10: did not find expected ',' or ']' "
        .. "(while parsing a flow sequence at line 6)" }, errs)
    end)

    it("still checks the readable files when one is broken", function()
      local model, errs = amb.load({ FIX .. "broken.yaml", FIX .. "errors.yaml" })
      assert.is_nil(model)
      assert.equal(12, #errs)
      assert.matches("^" .. FIX:gsub("%p", "%%%0") .. "broken%.yaml:7:10: ", errs[1])
    end)

    it("needs a kind and a name", function()
      local model, errs = load("apiVersion: getambassador.io/v3alpha1\nmetadata: {name: x}\n---\n"
        .. "apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nspec: {prefix: /a/}\n---\n"
        .. "apiVersion: ambassador/v1\nkind: Mapping\nprefix: /b/\n")
      assert.is_nil(model)
      assert.same({
        "t.yaml:1: Resource <unnamed>: kind: required",
        "t.yaml:4: Mapping <unnamed>: metadata.name: required",
        "t.yaml:8: Mapping <unnamed>: name: required",
      }, errs)
    end)
  end)

  describe("every error at once", function()
    it("collects one exact message per mistake and loads nothing", function()
      local model, errs, warns = amb.load({ FIX .. "errors.yaml" })
      assert.is_nil(model)
      assert.is_table(warns)
      local f = FIX .. "errors.yaml"
      assert.same({
        f .. ":3: Mapping no-service: service: required",
        f .. ":11: Mapping no-prefix: prefix: required",
        f .. ':27: Mapping bad-grpc: grpc: must be true or false, not the string "yes please"',
        f .. ":35: Mapping numeric-prefix: prefix: must be a string, not number 12",
        f .. ":46: Mapping list-headers: headers: must be a mapping, not a list",
        f .. ':55: Mapping bad-port: service: port must be an integer between 1 and 65535, not "70000"',
        f .. ':64: Mapping bad-scheme: service: unknown scheme "ftp" (only http:// and https:// are supported)',
        f .. ':73: Mapping with-path: service: a path after the host is not supported ("/api"): '
          .. "use rewrite for paths",
        f .. ":75: Mapping bad-port: duplicate Mapping name in namespace default (first defined at " .. f .. ":48)",
        f .. ':92: Host bad-action: requestPolicy.insecure.action: must be Redirect, Route or Reject '
          .. '(case-sensitive), not "route"',
        f .. ":94: Listener no-model: securityModel: required",
      }, errs)
    end)
  end)

  describe("Mapping", function()
    it("defaults rewrite to / and keeps the path with rewrite ''", function()
      assert.equal("/", route_of({ "prefix: /a/", "service: a" }).rewrite)
      assert.equal("", route_of({ "prefix: /a/", "service: a", 'rewrite: ""' }).rewrite)
      assert.equal("/x/", route_of({ "prefix: /a/", "service: a", "rewrite: /x/" }).rewrite)
    end)

    it("reads the match fields", function()
      local r = route_of({ "prefix: '^/v[0-9]+/.*'", "prefix_regex: true", "case_sensitive: false",
        "method: POST", "precedence: -2", "service: a" })
      assert.equal("^/v[0-9]+/.*", r.prefix)
      assert.is_true(r.prefix_regex)
      assert.is_false(r.prefix_exact)
      assert.is_false(r.case_sensitive)
      assert.equal("POST", r.method)
      assert.is_false(r.method_regex)
      assert.equal(-2, r.precedence)
      r = route_of({ "prefix: /exact", "prefix_exact: true", "method: 'GET|HEAD'", "method_regex: true",
        "service: a" })
      assert.is_true(r.prefix_exact)
      assert.is_true(r.method_regex)
    end)

    it("lets prefix_regex win over prefix_exact", function()
      local r = route_of({ "prefix: /a.*", "prefix_regex: true", "prefix_exact: true", "service: a" })
      assert.is_true(r.prefix_regex)
      assert.is_false(r.prefix_exact)
    end)

    it("reads exact, regex and presence headers with lower-case names", function()
      local r = route_of({ "prefix: /a/", "service: a", "headers: {X-Env: prod, x-canary: true}",
        "regex_headers: {x-user: '^u[0-9]+$'}" })
      assert.same({
        { name = "x-canary", value = true, regex = false },
        { name = "x-env", value = "prod", regex = false },
        { name = "x-user", value = "^u[0-9]+$", regex = true },
      }, r.headers)
    end)

    it("turns an exact :authority header into a host constraint", function()
      local model, errs, warns = load(doc("Mapping", "m", { "prefix: /a/", "service: a",
        "headers: {':authority': api.example.com, x: y}" }) .. LISTENER)
      assert.same({}, errs)
      assert.same({}, warns)
      local r = model.routes[1]
      assert.same({ kind = "exact", value = "api.example.com" }, r.host)
      assert.same({ { name = "x", value = "y", regex = false } }, r.headers)
    end)

    it("refuses a '*' in an exact :authority header", function()
      assert.equal("t.yaml:10: Mapping m: headers.:authority: a '*' in an exact :authority match cannot match "
        .. "anything; use hostname for globs",
        error_of({ 'hostname: "*"', "prefix: /a/", "service: a", "headers: {':authority': '*.example.com'}" }))
    end)

    it("refuses header values that are not strings", function()
      assert.equal("t.yaml:11: Mapping m: headers.x-version: must be a string, not number 2 (quote it)",
        error_of({ 'hostname: "*"', "prefix: /a/", "service: a", "headers:", "  x-version: 2" }))
    end)

    it("reads hostname as a glob, host as exact or regex", function()
      -- "*" is kept: it counts in the route weight, the router ignores it for matching
      assert.same({ kind = "glob", value = "*" }, route_of({ "prefix: /a/", "service: a" }).host)

      local m = load(doc("Mapping", "m", { "hostname: '*.example.com'", "prefix: /a/", "service: a" }) .. LISTENER)
      assert.same({ kind = "glob", value = "*.example.com" }, m.routes[1].host)
      m = load(doc("Mapping", "m", { "host: api.example.com", "prefix: /a/", "service: a" }) .. LISTENER)
      assert.same({ kind = "exact", value = "api.example.com" }, m.routes[1].host)
      m = load(doc("Mapping", "m", { "host: '^api[0-9]\\.example\\.com$'", "host_regex: true", "prefix: /a/",
        "service: a" }) .. LISTENER)
      assert.same({ kind = "regex", value = "^api[0-9]\\.example\\.com$" }, m.routes[1].host)
      assert.same({ 1 }, m.routes[1].hosts) -- a regex attaches to every Host
    end)

    it("lets hostname win over host, with the warning Emissary gives", function()
      local model, errs, warns = load(doc("Mapping", "m", { 'hostname: "*"', "host: api.example.com",
        "prefix: /a/", "service: a" }) .. LISTENER)
      assert.same({}, errs)
      assert.same({ "t.yaml:7: Mapping m: hostname: both host and hostname are set, using hostname" }, warns)
      assert.same({ kind = "glob", value = "*" }, model.routes[1].host)
    end)

    it("refuses a '*' in host without host_regex and globs that are not DNS globs", function()
      assert.equal("t.yaml:7: Mapping m: host: contains '*' but host_regex is not set: host is an exact match; "
        .. "use hostname for globs", error_of({ "host: '*.example.com'", "prefix: /a/", "service: a" }))
      assert.equal('t.yaml:7: Mapping m: hostname: "a.*.com" is not a DNS glob: \'*\' may only be the first '
        .. "or the last character", error_of({ "hostname: a.*.com", "prefix: /a/", "service: a" }))
    end)

    it("uses timeout_ms, the Module's cluster_request_timeout_ms, else 3000", function()
      assert.equal(3000, route_of({ "prefix: /a/", "service: a" }).timeout_ms)
      assert.equal(0, route_of({ "prefix: /a/", "service: a", "timeout_ms: 0" }).timeout_ms)
      assert.equal(250, route_of({ "prefix: /a/", "service: a", "timeout_ms: 250" }).timeout_ms)
      local model = load(doc("Module", "ambassador", { "config:", "  cluster_request_timeout_ms: 9000" })
        .. doc("Mapping", "m", { 'hostname: "*"', "prefix: /a/", "service: a" })
        .. doc("Mapping", "n", { 'hostname: "*"', "prefix: /b/", "service: a", "timeout_ms: 10" }) .. LISTENER)
      assert.equal("n", model.routes[1].name) -- "/b/" sorts before "/a/"
      assert.equal(10, model.routes[1].timeout_ms)
      assert.equal(9000, model.routes[2].timeout_ms)
      assert.equal("t.yaml:10: Mapping m: timeout_ms: must be >= 0, not -1",
        error_of({ 'hostname: "*"', "prefix: /a/", "service: a", "timeout_ms: -1" }))
      assert.equal('t.yaml:10: Mapping m: timeout_ms: must be an integer, not the string "3000"',
        error_of({ 'hostname: "*"', "prefix: /a/", "service: a", 'timeout_ms: "3000"' }))
    end)

    it("puts connect_timeout_ms on the cluster", function()
      local _, model = route_of({ "prefix: /a/", "service: a", "connect_timeout_ms: 750" })
      assert.equal(750, model.clusters[1].connect_timeout_ms)
    end)

    it("warns about Emissary fields it does not implement yet and unknown ones", function()
      local model, errs, warns = load(doc("Mapping", "m", { 'hostname: "*"', "prefix: /a/", "service: a",
        "add_request_headers: {x: y}", "bypass_auth: true", "weight: 10", "frobnicate: 1" }) .. LISTENER)
      assert.same({}, errs)
      assert.is_table(model)
      assert.same({
        "t.yaml:11: Mapping m: bypass_auth: not implemented yet, ignored",
        "t.yaml:13: Mapping m: frobnicate: unknown field, ignored",
      }, warns)
    end)

    it("attaches a host-less v3alpha1 Mapping to no Host, and says how to fix it", function()
      local warns, model = warnings_of(doc("Mapping", "lost", { "prefix: /a/", "service: a" }) .. LISTENER)
      assert.same({ 't.yaml:2: Mapping lost: attaches to no Host: a v3alpha1 Mapping without hostname, host or '
        .. 'headers[":authority"] is only served by a Host whose mappingSelector selects it; '
        .. 'add hostname: "*" to serve it on every Host' }, warns)
      assert.same({}, model.routes[1].hosts)
    end)

    it("refuses duplicate names in one namespace, not across namespaces", function()
      local m = { 'hostname: "*"', "prefix: /a/", "service: a" }
      local model, errs = load(doc("Mapping", "twin", m) .. doc("Mapping", "twin", m, { "namespace: other" })
        .. LISTENER)
      assert.same({}, errs)
      assert.equal(2, #model.routes)
      model, errs = load(doc("Mapping", "twin", m) .. doc("Mapping", "twin", m) .. LISTENER)
      assert.is_nil(model)
      assert.same({ "t.yaml:11: Mapping twin: duplicate Mapping name in namespace default (first defined at t.yaml:2)" },
        errs)
    end)

    it("splits traffic between identical Mappings quietly, and says when weights leave a gap", function()
      local m = { 'hostname: "*"', "prefix: /a/", "service: a" }
      local warns, model = warnings_of(doc("Mapping", "one", m) .. doc("Mapping", "two", m) .. LISTENER)
      assert.same({}, warns)
      assert.equal(2, #model.routes)
      local w = { 'hostname: "*"', "prefix: /a/", "service: a", "weight: 30" }
      warns = warnings_of(doc("Mapping", "one", w) .. doc("Mapping", "two", w) .. LISTENER)
      assert.same({ "t.yaml:20: Mapping two: weight: the Mappings with this match (one, two) have weights adding "
        .. "up to 60: 40% of their requests match none of them and go on to the next route" }, warns)
    end)

    it("refuses weights over 100, alone or together, as Emissary does", function()
      local function m(wt) return { 'hostname: "*"', "prefix: /a/", "service: a", "weight: " .. wt } end
      assert.equal("t.yaml:10: Mapping m: weight: must be between 0 and 100, not 150", error_of(m(150)))
      assert.equal('t.yaml:10: Mapping m: weight: must be a number between 0 and 100, not the string "half"',
        error_of(m("half")))
      local _, errs = load(doc("Mapping", "one", m(60)) .. doc("Mapping", "two", m(50)) .. LISTENER)
      assert.same({ "t.yaml:20: Mapping two: weight: the weights of Mappings with the same match add up to 110, "
        .. "over 100" }, errs)
    end)
  end)

  describe("service", function()
    local function svc(s, ns, opts)
      local r, err = mapping.parse_service(s, ns or "default", opts)
      return r or err
    end

    it("reads every form", function()
      assert.same({ host = "127.0.0.1", port = 50051, tls = false, port_given = true }, svc("127.0.0.1:50051"))
      assert.same({ host = "greeter", port = 80, tls = false, port_given = false }, svc("greeter"))
      assert.same({ host = "greeter", port = 8080, tls = false, port_given = true }, svc("http://greeter:8080"))
      assert.same({ host = "api.example.com", port = 443, tls = true, port_given = false },
        svc("https://api.example.com"))
      assert.same({ host = "api.example.com", port = 8443, tls = true, port_given = true },
        svc("HTTPS://api.example.com:8443"))
      assert.same({ host = "::1", port = 8080, tls = false, port_given = true }, svc("[::1]:8080"))
      assert.same({ host = "fe80::1", port = 443, tls = true, port_given = false }, svc("https://[fe80::1]"))
      assert.same({ host = "svc.ns", port = 80, tls = false, port_given = false }, svc("svc.ns"))
    end)

    it("refuses what it cannot route to", function()
      assert.equal('unknown scheme "grpc" (only http:// and https:// are supported)', svc("grpc://a:1"))
      assert.equal('a path after the host is not supported ("/"): use rewrite for paths', svc("https://qotm2/"))
      assert.equal('port must be an integer between 1 and 65535, not "0"', svc("a:0"))
      assert.equal('port must be an integer between 1 and 65535, not "65536"', svc("a:65536"))
      assert.equal('port must be an integer between 1 and 65535, not "http"', svc("a:http"))
      assert.equal('port must be an integer between 1 and 65535, not ""', svc("a:"))
      assert.equal('no host in "http://"', svc("http://"))
      assert.equal('bad host name "a b"', svc("a b:80"))
      assert.equal('bad IPv6 address in "[zz]:80"', svc("[zz]:80"))
    end)

    it("qualifies short names from other namespaces (§0)", function()
      assert.equal("cart.shop", svc("cart:8080", "shop").host)
      assert.equal("cart", svc("cart:8080", "default").host)
      assert.equal("cart.other", svc("cart.other", "shop").host)
      assert.equal("localhost", svc("localhost:9000", "shop").host)
      assert.equal("10.0.0.1", svc("10.0.0.1", "shop").host)
      assert.equal("cart", svc("cart", "shop", { use_ambassador_namespace = true }).host)
      assert.equal("cart", svc("cart", "amb", { ambassador_namespace = "amb" }).host)
    end)

    it("shares one cluster per (host, port, grpc, TLS context) with stable names", function()
      local function m(name, prefix, service, grpc)
        return doc("Mapping", name, { 'hostname: "*"', "prefix: " .. prefix, "service: " .. service,
          "grpc: " .. tostring(grpc) })
      end
      local model, errs = load(m("a", "/a/", "up:9000", true) .. m("b", "/b/", "up:9000", true)
        .. m("c", "/c/", "up:9000", false) .. m("d", "/d/", "https://up:9000", true)
        .. m("e", "/e/", "up-1.x", false) .. LISTENER)
      assert.same({}, errs)
      local names = {}
      for i, c in ipairs(model.clusters) do
        names[i] = c.name
      end
      assert.same({ "up_9000", "up_9000_http1", "up_9000_tls", "up_1_x_80" }, names)
      local by_name = {}
      for _, r in ipairs(model.routes) do
        by_name[r.name] = model.clusters[r.cluster].name
      end
      assert.same({ a = "up_9000", b = "up_9000", c = "up_9000_http1", d = "up_9000_tls", e = "up_1_x_80" }, by_name)
      assert.equal("https", model.clusters[3].tls.context)
      assert.is_false(model.clusters[1].tls)
      assert.is_false(model.clusters[2].http2)
    end)
  end)

  describe("evaluation order (§1.7)", function()
    local function order(text)
      local model, errs = load(text .. LISTENER)
      assert.same({}, errs)
      local names = {}
      for i, r in ipairs(model.routes) do
        names[i] = r.name
      end
      return names
    end

    local function m(name, body)
      local lines = { 'hostname: "*"', "service: a" }
      for _, l in ipairs(body) do
        lines[#lines + 1] = l
      end
      return doc("Mapping", name, lines)
    end

    it("tries higher precedence, then longer prefixes, then more header constraints first", function()
      assert.same({ "long", "short" }, order(m("short", { "prefix: /a/" }) .. m("long", { "prefix: /a/b/" })))
      assert.same({ "prec", "long" }, order(m("long", { "prefix: /a/b/c/" }) .. m("prec", { "prefix: /",
        "precedence: 1" })))
      assert.same({ "hdr", "plain" }, order(m("plain", { "prefix: /a/" }) .. m("hdr", { "prefix: /a/",
        "headers: {x: y}" })))
      assert.same({ "method", "plain" }, order(m("plain", { "prefix: /a/" }) .. m("method", { "prefix: /a/",
        "method: GET" })))
      -- same lengths: prefix text descending, as Python compares the lists
      assert.same({ "b", "a" }, order(m("a", { "prefix: /a/" }) .. m("b", { "prefix: /b/" })))
    end)

    it("counts a hostname's :authority, so a longer hostname goes first", function()
      local text = doc("Mapping", "star", { 'hostname: "*"', "prefix: /a/", "service: a" })
        .. doc("Mapping", "named", { "hostname: api.example.com", "prefix: /a/", "service: a" })
      assert.same({ "named", "star" }, order(text))
    end)
  end)

  describe("Host", function()
    it("reads hostname (default *) and requestPolicy.insecure.action (default Redirect)", function()
      local model, errs, warns = load(doc("Host", "h1", { "hostname: api.example.com" })
        .. doc("Host", "h2", { "requestPolicy: {insecure: {action: Reject}}" })
        .. doc("Host", "h3", { "hostname: ''", "requestPolicy:", "  insecure:", "    action: Route" }) .. LISTENER)
      assert.same({}, errs)
      -- nothing terminates TLS and the listener trusts no XFP: the redirect goes nowhere
      assert.same({ "t.yaml:2: Host h1: requestPolicy.insecure.action: Redirect (the default) answers every "
        .. "request with a 301 to https://, but nothing here terminates TLS; set action: Route to serve cleartext" },
        warns)
      assert.same({ name = "h1", namespace = "default", hostname = "api.example.com", insecure_action = "Redirect",
        source = "t.yaml:2" }, model.hosts[1])
      assert.equal("*", model.hosts[2].hostname)
      assert.equal("Reject", model.hosts[2].insecure_action)
      assert.equal("*", model.hosts[3].hostname)
      assert.equal("Route", model.hosts[3].insecure_action)
    end)

    it("synthesizes default-host when there is none (§2.5, no fallback cert)", function()
      local model = load(LISTENER)
      assert.same({ { name = "default-host", namespace = "default", hostname = "*", insecure_action = "Route",
        source = "(default)" } }, model.hosts)
    end)

    it("takes case-sensitive actions only", function()
      assert.equal('t.yaml:9: Host m: requestPolicy.insecure.action: must be Redirect, Route or Reject '
        .. '(case-sensitive), not "redirect"', error_of({ "requestPolicy:", "  insecure:", "    action: redirect" },
        "Host"))
    end)

    it("takes acmeProvider {authority: none} quietly and warns about real ACME (Edge Stack only)", function()
      local route = "requestPolicy: {insecure: {action: Route}}"
      local warns = warnings_of(doc("Host", "h", { "hostname: a.example.com", route, "acmeProvider: {authority: none}" })
        .. doc("Host", "acme", { "hostname: b.example.com", route, "acmeProvider: {email: me@example.com}" })
        .. LISTENER)
      assert.same({ "t.yaml:18: Host acme: acmeProvider: ACME is not implemented (an Edge Stack feature), ignored; "
        .. "acmeProvider: {authority: none} says so without a warning" }, warns)
    end)

    it("says when Redirect cannot work, and not behind a trusted XFP balancer", function()
      local warns = warnings_of(doc("Host", "h", { "hostname: a.example.com" }) .. LISTENER)
      assert.equal(1, #warns)
      warns = warnings_of(doc("Host", "h", { "hostname: a.example.com" }) .. doc("Listener", "l", { "port: 8080",
        "protocol: HTTP", "securityModel: XFP", "l7Depth: 1", "hostBinding: {namespace: {from: ALL}}" }))
      assert.same({}, warns)
    end)

    it("attaches Mappings by glob compatibility", function()
      local text = doc("Host", "api", { "hostname: api.example.com" }) .. doc("Host", "wild", { "hostname: '*.example.com'" })
        .. doc("Host", "org", { "hostname: foo.org" })
        .. doc("Mapping", "sub", { "hostname: '*.example.com'", "prefix: /a/", "service: a" })
        .. doc("Mapping", "exact", { "host: api.example.com", "prefix: /b/", "service: a" })
        .. doc("Mapping", "any", { 'hostname: "*"', "prefix: /c/", "service: a" }) .. LISTENER
      local model, errs = load(text)
      assert.same({}, errs)
      local hosts = {}
      for _, r in ipairs(model.routes) do
        hosts[r.name] = r.hosts
      end
      assert.same({ sub = { 1, 2 }, exact = { 1, 2 }, any = { 1, 2, 3 } }, hosts)
    end)

    it("associates by mappingSelector labels, strictly (Emissary 3.2+)", function()
      local text = doc("Host", "sel", { "hostname: api.example.com", "mappingSelector:", "  matchLabels:",
        "    team: blue", "    tier: edge" })
        .. doc("Host", "plain", { "hostname: '*'" })
        .. doc("Mapping", "labelled", { "prefix: /a/", "service: a" }, { "labels: {team: blue, tier: edge}" })
        .. doc("Mapping", "half", { "prefix: /b/", "service: a" }, { "labels: {team: blue}" })
        .. doc("Mapping", "both", { "hostname: api.example.com", "prefix: /c/", "service: a" },
          { "labels: {team: blue, tier: edge}" })
        .. doc("Mapping", "wrong-host", { "hostname: other.org", "prefix: /d/", "service: a" },
          { "labels: {team: blue, tier: edge}" })
        .. doc("Mapping", "host-only", { "hostname: api.example.com", "prefix: /e/", "service: a" }) .. LISTENER
      local model, errs = load(text)
      assert.same({}, errs)
      local hosts = {}
      for _, r in ipairs(model.routes) do
        hosts[r.name] = r.hosts
      end
      assert.same({
        labelled = { 1 },      -- selector alone, no hostname
        half = {},             -- every selector label must match
        both = { 1, 2 },       -- selector and hostname both match sel; plain has no selector, hostname matches
        ["wrong-host"] = { 2 }, -- labels match sel but its hostname does not (strict); "*" takes it
        ["host-only"] = { 2 }, -- hostname matches, selector does not
      }, hosts)
    end)

    it("reads the v2 name selector and an empty selector as none", function()
      local text = doc("Host", "v2", { "hostname: '*'", "selector: {matchLabels: {app: x}}",
        "requestPolicy: {insecure: {action: Route}}" })
        .. doc("Host", "empty", { "hostname: '*'", "mappingSelector: {}", "requestPolicy: {insecure: {action: Route}}" })
        .. doc("Mapping", "m", { "prefix: /a/", "service: a" }, { "labels: {app: x}" }) .. LISTENER
      local model, errs, warns = load(text)
      assert.same({}, errs)
      assert.same({ 1 }, model.routes[1].hosts)
      assert.same({ app = "x" }, model.hosts[1].selector)
      assert.is_nil(model.hosts[2].selector)
      assert.same({}, warns)
    end)
  end)

  describe("hostglob_matches", function()
    local yes = {
      { "*", "anything" }, { "a.com", "a.com" }, { "*.a.com", "www.a.com" }, { "www.a.com", "*.a.com" },
      { "www.*", "www.a.com" }, { "*.a.com", "www.*" }, { "*.a.com", "*.b.a.com" }, { "*example.com", "*.example.com" },
      { "a.*", "a.b.*" },
    }
    local no = {
      { "a.com", "b.com" }, { "*.a.com", "a.com" }, { "*.a.com", "www.b.com" }, { "www.*", "api.a.com" },
      { ".a.com", ".a.com.x" }, { "*.a.*", "x.a.y" }, { "*.a.com", "*.b.com" },
    }
    it("agrees with Emissary's hostglob_matches", function()
      for _, p in ipairs(yes) do
        assert.is_true(amb.hostglob_matches(p[1], p[2]), p[1] .. " ~ " .. p[2])
        assert.is_true(amb.hostglob_matches(p[2], p[1]), p[2] .. " ~ " .. p[1])
      end
      for _, p in ipairs(no) do
        assert.is_false(amb.hostglob_matches(p[1], p[2]), p[1] .. " !~ " .. p[2])
      end
    end)
  end)

  describe("Listener", function()
    it("defaults to 0.0.0.0:8080 HTTP XFP with the documented warning", function()
      local model, errs, warns = load("")
      assert.same({}, errs)
      assert.same({ NO_LISTENER }, warns)
      assert.same({ { name = "default-listener", address = "0.0.0.0", port = 8080, protocol = "HTTP", tls = false,
        security_model = "XFP", l7_depth = 0, source = "(default)" } }, model.listeners)
    end)

    it("reads port, protocol, securityModel, bind_address and l7Depth", function()
      local model, errs, warns = load(doc("Listener", "l", { "port: 8081", "protocol: HTTP", "securityModel: SECURE",
        "bind_address: 127.0.0.1", "l7Depth: 2", "hostBinding: {namespace: {from: ALL}}" }))
      assert.same({}, errs)
      assert.same({}, warns)
      assert.same({ { name = "l", namespace = "default", address = "127.0.0.1", port = 8081, protocol = "HTTP",
        tls = false, security_model = "SECURE", l7_depth = 2, source = "t.yaml:2" } }, model.listeners)
    end)

    it("reads protocolStack and prefers it over protocol", function()
      local model, errs, warns = load(doc("Listener", "l", { "port: 8443", "protocol: HTTP",
        "protocolStack: [TLS, HTTP, TCP]", "securityModel: XFP", "hostBinding: {namespace: {from: ALL}}" }))
      assert.same({}, errs)
      assert.equal("HTTPS", model.listeners[1].protocol)
      assert.is_false(model.listeners[1].tls) -- no certificate anywhere: cleartext, as Emissary serves it
      assert.same({
        "t.yaml:9: Listener l: protocolStack: both protocol and protocolStack are set, using protocolStack",
        "t.yaml:9: Listener l: protocolStack: nothing terminates TLS (no Host tlsSecret, no TLSContext with hosts): "
          .. "this HTTPS Listener serves cleartext only",
      }, warns)
    end)

    it("refuses missing or wrong fields", function()
      local model, errs = load(doc("Listener", "l", { "port: 70000", "protocol: TCP", "securityModel: xfp",
        "hostBinding: {namespace: {from: ALL}}" }) .. doc("Listener", "l2", { "hostBinding: {namespace: {from: ALL}}" }))
      assert.is_nil(model)
      assert.same({
        "t.yaml:7: Listener l: port: must be between 1 and 65535, not 70000",
        "t.yaml:8: Listener l: protocol: TCP listeners are not supported by nuncio yet",
        't.yaml:9: Listener l: securityModel: must be one of XFP, SECURE, INSECURE, not "xfp"',
        "t.yaml:12: Listener l2: port: required",
        "t.yaml:12: Listener l2: protocol: required (or protocolStack)",
        "t.yaml:12: Listener l2: securityModel: required",
      }, errs)
    end)

    it("refuses two Listeners on one port", function()
      local l = { "port: 8080", "protocol: HTTP", "securityModel: XFP", "hostBinding: {namespace: {from: ALL}}" }
      local model, errs = load(doc("Listener", "a", l) .. doc("Listener", "b", l))
      assert.is_nil(model)
      assert.same({ "t.yaml:17: Listener b: port: 8080 is already used by Listener a (t.yaml:2)" }, errs)
    end)

    it("accepts hostBinding but says what is not enforced", function()
      local warns = warnings_of(doc("Listener", "l", { "port: 8080", "protocol: HTTP", "securityModel: XFP",
        "hostBinding:", "  namespace:", "    from: SELF", "  selector: {matchLabels: {a: b}}" }))
      assert.same({
        "t.yaml:12: Listener l: hostBinding.namespace.from: SELF is not enforced yet: "
          .. "Hosts of every namespace are served on this Listener",
        "t.yaml:13: Listener l: hostBinding.selector: not enforced yet: every Host is served on this Listener",
      }, warns)
      warns = warnings_of(doc("Listener", "l", { "port: 8080", "protocol: HTTP", "securityModel: XFP" }))
      assert.same({ "t.yaml:2: Listener l: hostBinding: missing (Emissary requires it); every Host is served "
        .. "on this Listener" }, warns)
    end)
  end)

  describe("Module", function()
    it("uses only the Module named ambassador and names the others", function()
      local model, errs, warns = load(doc("Module", "tls", { "config: {server: {enabled: true}}" })
        .. doc("Module", "ambassador", { "config:", "  server_name: nuncio-test" }) .. LISTENER)
      assert.same({}, errs)
      assert.same({ server_name = "nuncio-test" }, model.module)
      assert.equal("nuncio-test", model.http.server_name)
      assert.same({
        't.yaml:2: Module tls: ignored: only the Module named "ambassador" is used',
      }, warns)
    end)

    it("warns on keys of later issues and unknown keys, but applies cluster_request_timeout_ms", function()
      local model, errs, warns = load(doc("Module", "ambassador", { "config:", "  lua_scripts: 'x = 1'",
        "  strip_matching_host_port: true", "  enable_grpc_web: true", "  cluster_max_connection_lifetime_ms: 5",
        "  cluster_request_timeout_ms: 1234", "  warp_drive: on" })
        .. doc("Mapping", "m", { 'hostname: "*"', "prefix: /a/", "service: a" }) .. LISTENER)
      assert.same({}, errs)
      assert.equal(1234, model.routes[1].timeout_ms)
      assert.same({
        "t.yaml:11: Module ambassador: config.cluster_max_connection_lifetime_ms: accepted, not implemented yet",
        "t.yaml:13: Module ambassador: config.warp_drive: unknown field, ignored",
      }, warns)
      assert.is_true(model.http.strip_matching_host_port)
      assert.same({ code = "x = 1", source = "t.yaml:8", where = "t.yaml:8: Module ambassador: config.lua_scripts",
        file = "t.yaml", module = "ambassador" }, model.http.lua_scripts)
    end)

    it("honours use_ambassador_namespace_for_service_resolution", function()
      local model = load(doc("Module", "ambassador", { "config: {use_ambassador_namespace_for_service_resolution: true}" })
        .. doc("Mapping", "m", { 'hostname: "*"', "prefix: /a/", "service: cart" }, { "namespace: shop" }) .. LISTENER)
      assert.equal("cart", model.clusters[1].host)
    end)

    it("refuses a bad cluster_request_timeout_ms", function()
      assert.equal("t.yaml:8: Module ambassador: config.cluster_request_timeout_ms: must be an integer, not "
        .. 'the string "soon"', select(2, load(doc("Module", "ambassador", { "config:",
        "  cluster_request_timeout_ms: soon" })))[1])
    end)
  end)

  describe("other kinds", function()
    it("reads an origination-only TLSContext quietly (spec/01-unit/tls_loading_spec.lua has the rest)", function()
      local warns, model = warnings_of(doc("TLSContext", "upstream", { "alpn_protocols: h2", "sni: up.example.com" })
        .. LISTENER)
      assert.same({}, warns)
      assert.same({}, model.tls_contexts)
    end)

    it("names kinds that are not implemented and unknown ones", function()
      local warns = warnings_of(doc("AuthService", "authn", { "auth_service: x" })
        .. doc("TCPMapping", "db", { "port: 5432", "service: db" })
        .. doc("RateLimitService", "rl", { "service: rl" })
        .. doc("Frobnicator", "f", { "x: 1" }) .. LISTENER)
      assert.same({
        "t.yaml:2: AuthService authn: not implemented yet, ignored",
        "t.yaml:9: TCPMapping db: not implemented yet, ignored",
        "t.yaml:17: RateLimitService rl: not implemented yet, ignored",
        "t.yaml:24: Frobnicator f: unknown kind, ignored",
      }, warns)
    end)
  end)

  describe("ambassador_id", function()
    local ffi = require("ffi")
    pcall(ffi.cdef, "int setenv(const char *name, const char *value, int overwrite); int unsetenv(const char *name);")

    local function ids_text()
      local function m(name, id_line)
        local body = { 'hostname: "*"', "prefix: /" .. name .. "/", "service: a" }
        if id_line then
          body[#body + 1] = id_line
        end
        return doc("Mapping", name, body)
      end
      return m("absent") .. m("string-default", "ambassador_id: default") .. m("list-default",
        "ambassador_id: [blue, default]") .. m("blue", "ambassador_id: blue") .. m("green", "ambassador_id: [green]")
        .. LISTENER
    end

    local function names(model)
      local out = {}
      for _, r in ipairs(model.routes) do
        out[#out + 1] = r.name
      end
      table.sort(out)
      return out
    end

    after_each(function()
      ffi.C.unsetenv("AMBASSADOR_ID")
    end)

    it("uses resources for the default id (absent, string or list)", function()
      assert.same({ "absent", "list-default", "string-default" }, names(load(ids_text())))
    end)

    it("uses another id when told, by opts or by AMBASSADOR_ID", function()
      assert.same({ "blue", "list-default" }, names(load(ids_text(), { ambassador_id = "blue" })))
      ffi.C.setenv("AMBASSADOR_ID", "green", 1)
      assert.same({ "green" }, names(load(ids_text())))
    end)

    it("refuses ids that are not strings", function()
      local model, errs = load(doc("Mapping", "m", { 'hostname: "*"', "prefix: /a/", "service: a",
        "ambassador_id: 12" }) .. LISTENER)
      assert.is_nil(model)
      assert.same({ "t.yaml:10: Mapping m: ambassador_id: must be a string or a list of strings, not number 12" }, errs)
    end)

    it("drops Listeners and Hosts of other instances too", function()
      local model = load(doc("Listener", "other", { "port: 9000", "protocol: HTTP", "securityModel: XFP",
        "ambassador_id: [other]" }) .. doc("Host", "other-host", { "ambassador_id: other" }))
      assert.equal("default-listener", model.listeners[1].name)
      assert.equal("default-host", model.hosts[1].name)
    end)
  end)
end)
