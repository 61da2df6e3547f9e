local router = require("nuncio.router")

-- Model pieces in the shape of docs/internals.md §2, with the defaults config.load fills.
local function host(hostname, action)
  return { name = "h-" .. hostname, hostname = hostname, insecure_action = action or "Route",
           source = "spec:1" }
end

local function route(t)
  local r = {
    name = "r", namespace = "default", source = "spec:1",
    prefix = "/", prefix_regex = false, prefix_exact = false, case_sensitive = true,
    rewrite = "/", host = nil, method = nil, method_regex = false, headers = {},
    precedence = 0, grpc = false, cluster = 1, timeout_ms = 3000, hosts = { 1 },
  }
  for k, v in pairs(t) do
    r[k] = v
  end
  return r
end

local function new(hosts, routes)
  local r, err = router.new({ hosts = hosts, routes = routes, clusters = {} })
  assert(r, err)
  return r
end

-- One "*" Host with every route attached: the common shape.
local function star(routes)
  return new({ host("*") }, routes)
end

local function req(t)
  t = t or {}
  local headers = t.headers or {}
  return {
    authority = t.authority or "example.com",
    path = t.path or "/",
    method = t.method or "GET",
    secure = t.secure ~= false,
    header = function(name) return headers[name] end,
    random = t.random,
  }
end

local function name_of(r, t)
  local rt, why = r:match(req(t))
  return rt and rt.name or why
end

local function names(r)
  local out = {}
  for i, rt in ipairs(r:routes()) do
    out[i] = rt.name
  end
  return out
end

describe("nuncio.router", function()
  describe("ordering", function()
    it("tries the longer prefix first whatever the file order", function()
      local a = route{ name = "root", prefix = "/" }
      local b = route{ name = "api", prefix = "/api/" }
      for _, routes in ipairs({ { a, b }, { b, a } }) do
        local r = star(routes)
        assert.same({ "api", "root" }, names(r))
        assert.equal("api", name_of(r, { path = "/api/x" }))
        assert.equal("root", name_of(r, { path = "/other" }))
      end
    end)

    it("puts higher precedence before a longer prefix, negative last", function()
      local r = star{
        route{ name = "long", prefix = "/api/v1/" },
        route{ name = "neg", prefix = "/api/v1/users/", precedence = -1 },
        route{ name = "prec", prefix = "/", precedence = 10 },
      }
      assert.same({ "prec", "long", "neg" }, names(r))
      assert.equal("prec", name_of(r, { path = "/api/v1/users/7" }))
    end)

    it("puts a header-constrained route before the same prefix without headers", function()
      local r = star{
        route{ name = "plain", prefix = "/p/" },
        route{ name = "tenant", prefix = "/p/", headers = { { name = "x-tenant", value = "a" } } },
      }
      assert.same({ "tenant", "plain" }, names(r))
      assert.equal("tenant", name_of(r, { path = "/p/1", headers = { ["x-tenant"] = "a" } }))
      assert.equal("plain", name_of(r, { path = "/p/1", headers = { ["x-tenant"] = "b" } }))
      assert.equal("plain", name_of(r, { path = "/p/1" }))
    end)

    it("puts the larger total header length first", function()
      local r = star{
        route{ name = "short", prefix = "/p/", headers = { { name = "x-a", value = "b" } } },
        route{ name = "long", prefix = "/p/", headers = { { name = "x-a", value = "bbbb" } } },
      }
      assert.same({ "long", "short" }, names(r))
    end)

    it("puts a method-constrained route first, then orders methods descending", function()
      local r = star{
        route{ name = "any", prefix = "/m/" },
        route{ name = "get", prefix = "/m/", method = "GET" },
        route{ name = "put", prefix = "/m/", method = "PUT" },
        route{ name = "post", prefix = "/m/", method = "POST" },
      }
      -- POST: :method weighs 7 + 4; PUT and GET tie at 7 + 3, then "PUT" > "GET".
      assert.same({ "post", "put", "get", "any" }, names(r))
      assert.equal("post", name_of(r, { path = "/m/", method = "POST" }))
      assert.equal("get", name_of(r, { path = "/m/", method = "GET" }))
      assert.equal("any", name_of(r, { path = "/m/", method = "DELETE" }))
    end)

    it("puts hostname \"*\" before no hostname (its :authority counts 11)", function()
      local r = star{
        route{ name = "none", prefix = "/h/" },
        route{ name = "star", prefix = "/h/", host = { kind = "glob", value = "*" } },
      }
      assert.same({ "star", "none" }, names(r))
      assert.equal(11, router.route_weight(r:routes()[1])[3])
      assert.equal(0, router.route_weight(r:routes()[2])[3])
      assert.equal("star", name_of(r, { path = "/h/x", authority = "anything" }))
    end)

    it("orders equal-length prefixes by prefix string, descending", function()
      local r = star{
        route{ name = "aa", prefix = "/aa/" },
        route{ name = "bb", prefix = "/bb/" },
      }
      assert.same({ "bb", "aa" }, names(r))
    end)

    it("keeps the model order for equal weights (stable); identical ones are one canary group", function()
      local routes, expect = {}, {}
      for i = 1, 40 do
        routes[i] = route{ name = "r" .. i, prefix = "/same/", cluster = i }
        expect[i] = "r" .. i
      end
      local r = star(routes)
      assert.same(expect, names(r))
      -- 40 identical Mappings share the traffic; the first takes the lowest draws
      assert.equal("r1", name_of(r, { path = "/same/x", random = 0 }))

      local reversed, rexpect = {}, {}
      for i = 40, 1, -1 do
        reversed[#reversed + 1] = routes[i]
        rexpect[#rexpect + 1] = "r" .. i
      end
      r = star(reversed)
      assert.same(rexpect, names(r))
      assert.equal("r40", name_of(r, { path = "/same/x", random = 0 }))
    end)

    it("computes Emissary's weight vector", function()
      local w = router.route_weight(route{
        precedence = 2, prefix = "/api/", method = "POST",
        host = { kind = "glob", value = "*.example.com" },
        headers = {
          { name = "x-a", value = "b", regex = false },
          { name = "x-r", value = "^v.*$", regex = true },
          { name = "x-p", value = true, regex = false },
        },
      })
      -- x-a 3+1, x-r 3+5+1, x-p 3+1 ("*"), :authority 10+13, :method 7+4
      assert.same({ 2, 5, 51, 0, "/api/", "POST",
                    "x-a-b", "x-r-^v.*$", "x-p-*", ":authority-*.example.com", ":method-POST" }, w)
    end)

    it("counts a missing method as GET and a regex host one more", function()
      local w = router.route_weight(route{ prefix = "/x", host = { kind = "regex", value = "a.*" } })
      assert.same({ 0, 2, 10 + 3 + 1, 0, "/x", "GET", ":authority-a.*" }, w)
    end)

    it("returns a copy from routes()", function()
      local r = star{ route{ name = "a", prefix = "/a/" }, route{ name = "b", prefix = "/b/" } }
      local list = r:routes()
      list[1], list[2] = nil, nil
      assert.same({ "b", "a" }, names(r))
    end)
  end)

  describe("rewrite", function()
    it("replaces the prefix with the default \"/\"", function()
      local rt = route{ prefix = "/backend-api/" }
      assert.equal("/foo/bar", router.rewrite(rt, "/backend-api/foo/bar"))
    end)

    it("keeps the path unchanged for rewrite \"\"", function()
      local rt = route{ prefix = "/backend-api/", rewrite = "" }
      assert.equal("/backend-api/foo?x=1", router.rewrite(rt, "/backend-api/foo?x=1"))
    end)

    it("keeps a gRPC path when rewrite equals the prefix", function()
      local rt = route{ prefix = "/helloworld.Greeter/", rewrite = "/helloworld.Greeter/", grpc = true }
      assert.equal("/helloworld.Greeter/SayHello", router.rewrite(rt, "/helloworld.Greeter/SayHello"))
    end)

    it("strips the service name for gRPC with the default rewrite (why gRPC needs one)", function()
      local rt = route{ prefix = "/helloworld.Greeter/", grpc = true }
      assert.equal("/SayHello", router.rewrite(rt, "/helloworld.Greeter/SayHello"))
    end)

    it("keeps the query string", function()
      local rt = route{ prefix = "/a/", rewrite = "/b/" }
      assert.equal("/b/x?y=1&z=/a/", router.rewrite(rt, "/a/x?y=1&z=/a/"))
    end)

    it("turns /foo/bar into //bar for prefix /foo and rewrite / (as Envoy does)", function()
      local rt = route{ prefix = "/foo" }
      assert.equal("//bar", router.rewrite(rt, "/foo/bar"))
      assert.equal("/", router.rewrite(rt, "/foo"))
    end)

    it("replaces the matched prefix of a case-insensitive route", function()
      local rt = route{ prefix = "/api/", rewrite = "/v2/", case_sensitive = false }
      assert.equal("/v2/x", router.rewrite(rt, "/API/x"))
    end)

    it("replaces the whole path (not the query) for a prefix_exact route", function()
      local rt = route{ prefix = "/exact", prefix_exact = true, rewrite = "/other" }
      assert.equal("/other?a=1", router.rewrite(rt, "/exact?a=1"))
    end)

    it("replaces the whole path (not the query) for a prefix_regex route", function()
      local rt = route{ prefix = "/v[0-9]+/.*", prefix_regex = true, rewrite = "/x" }
      assert.equal("/x?q=1", router.rewrite(rt, "/v1/a/b?q=1"))
      assert.equal("/x", router.rewrite(rt, "/v1/a/b"))
      rt.rewrite = ""
      assert.equal("/v1/a/b?q=1", router.rewrite(rt, "/v1/a/b?q=1"))
    end)
  end)

  describe("virtual hosts", function()
    it("selects an exact hostname, case-insensitively", function()
      local r = new({ host("API.Example.com") }, { route{ name = "api" } })
      assert.equal("api", name_of(r, { authority = "api.EXAMPLE.com" }))
      local rt, why = r:match(req{ authority = "other.example.com" })
      assert.is_nil(rt)
      assert.equal("no_route", why)
    end)

    it("includes the port: host:443 is not host", function()
      local r = new({ host("api.example.com") }, { route{ name = "api" } })
      assert.equal("no_route", name_of(r, { authority = "api.example.com:443" }))
      r = new({ host("api.example.com:8443") }, { route{ name = "api" } })
      assert.equal("api", name_of(r, { authority = "api.example.com:8443" }))
      assert.equal("no_route", name_of(r, { authority = "api.example.com" }))
    end)

    it("matches *.example.com against one or more labels, never the bare suffix", function()
      local r = new({ host("*.example.com") }, { route{ name = "w" } })
      assert.equal("w", name_of(r, { authority = "a.example.com" }))
      assert.equal("w", name_of(r, { authority = "a.b.EXAMPLE.com" }))
      assert.equal("no_route", name_of(r, { authority = "example.com" }))
      assert.equal("no_route", name_of(r, { authority = ".example.com" }))
      assert.equal("no_route", name_of(r, { authority = "a.example.com:443" }))
    end)

    it("matches example.* against any ending, port included", function()
      local r = new({ host("example.*") }, { route{ name = "w" } })
      assert.equal("w", name_of(r, { authority = "example.org" }))
      assert.equal("w", name_of(r, { authority = "example.com:8080" }))
      assert.equal("no_route", name_of(r, { authority = "www.example.org" }))
      assert.equal("no_route", name_of(r, { authority = "example." }))
    end)

    it("prefers exact, then the longest suffix, then the longest prefix, then *", function()
      local hosts = {
        host("a.example.com"), host("*.example.com"), host("*.b.example.com"),
        host("a.example.*"), host("a.*"), host("*"),
      }
      local routes = {}
      for i, n in ipairs({ "exact", "suffix", "longsuffix", "longprefix", "prefix", "star" }) do
        routes[i] = route{ name = n, hosts = { i } }
      end
      local r = new(hosts, routes)
      assert.equal("exact", name_of(r, { authority = "a.example.com" }))
      assert.equal("suffix", name_of(r, { authority = "z.example.com" }))
      assert.equal("longsuffix", name_of(r, { authority = "z.b.example.com" }))
      assert.equal("longsuffix", name_of(r, { authority = "a.b.example.com" }))
      assert.equal("longprefix", name_of(r, { authority = "a.example.org" }))
      assert.equal("prefix", name_of(r, { authority = "a.zzz" }))
      assert.equal("star", name_of(r, { authority = "other" }))
      assert.equal("star", name_of(r, { authority = "b.example.org" }))
      -- The port is part of the name: no exact or suffix match, but "a.example.*" covers it.
      assert.equal("longprefix", name_of(r, { authority = "a.example.com:443" }))
    end)

    it("answers no_route when no vhost matches", function()
      local r = new({ host("a.example.com") }, { route{ name = "a" } })
      local rt, why = r:match(req{ authority = "b.example.com" })
      assert.is_nil(rt)
      assert.equal("no_route", why)
    end)

    it("only tries the routes attached to the selected Host", function()
      local r = new({ host("a.com"), host("b.com") }, {
        route{ name = "x", prefix = "/p/", hosts = { 1 } },
        route{ name = "y", prefix = "/p/", hosts = { 2 } },
        route{ name = "both", prefix = "/", hosts = { 1, 2 } },
        route{ name = "none", prefix = "/n/", hosts = {} },
      })
      assert.equal("x", name_of(r, { authority = "a.com", path = "/p/1" }))
      assert.equal("y", name_of(r, { authority = "b.com", path = "/p/1" }))
      assert.equal("both", name_of(r, { authority = "b.com", path = "/q" }))
      assert.equal("both", name_of(r, { authority = "a.com", path = "/n/1" }))
    end)

    it("lets a later Host with the same hostname replace the earlier one", function()
      local r = new({ host("a.com", "Reject"), host("A.com", "Route") }, {
        route{ name = "first", prefix = "/1/", hosts = { 1 } },
        route{ name = "second", prefix = "/2/", hosts = { 2 } },
      })
      assert.equal("second", name_of(r, { authority = "a.com", path = "/2/", secure = false }))
      assert.equal("no_route", name_of(r, { authority = "a.com", path = "/1/" }))
    end)
  end)

  describe("route host constraints", function()
    local function one(hostc)
      return star{ route{ name = "h", host = hostc } }
    end

    it("glob *.example.com is a case-insensitive suffix match", function()
      local r = one{ kind = "glob", value = "*.example.com" }
      assert.equal("h", name_of(r, { authority = "a.example.com" }))
      assert.equal("h", name_of(r, { authority = "A.EXAMPLE.COM" }))
      assert.equal("no_route", name_of(r, { authority = "example.com" }))
      assert.equal("no_route", name_of(r, { authority = "a.example.com:443" }))
    end)

    it("glob example.* is a prefix match", function()
      local r = one{ kind = "glob", value = "example.*" }
      assert.equal("h", name_of(r, { authority = "example.net:8080" }))
      assert.equal("no_route", name_of(r, { authority = "www.example.net" }))
    end)

    it("glob without * and exact compare the whole authority, port included", function()
      for _, kind in ipairs({ "glob", "exact" }) do
        local r = one{ kind = kind, value = "Api.Example.com" }
        assert.equal("h", name_of(r, { authority = "API.example.COM" }))
        assert.equal("h", name_of(r, { authority = "api.example.com" }))
        assert.equal("no_route", name_of(r, { authority = "api.example.com:8080" }))
        assert.equal("no_route", name_of(r, { authority = "xapi.example.com" }))
      end
    end)

    it("glob * constrains nothing", function()
      local r = one{ kind = "glob", value = "*" }
      assert.equal("h", name_of(r, { authority = "whatever:1" }))
    end)

    it("regex must match the whole authority", function()
      local r = one{ kind = "regex", value = "api[0-9]+\\.example\\.com(:[0-9]+)?" }
      assert.equal("h", name_of(r, { authority = "api1.example.com:8443" }))
      assert.equal("h", name_of(r, { authority = "api22.example.com" }))
      assert.equal("no_route", name_of(r, { authority = "xapi1.example.com" }))
      assert.equal("no_route", name_of(r, { authority = "api1.example.com.evil" }))
    end)

    it("treats a request without authority as empty", function()
      local r = one{ kind = "glob", value = "a.com" }
      local rt, why = r:match({ path = "/", method = "GET", secure = true })
      assert.is_nil(rt)
      assert.equal("no_route", why)
    end)
  end)

  describe("insecure actions", function()
    local function with_action(action, extra)
      local routes = { route{ name = "app", prefix = "/app/" } }
      for _, rt in ipairs(extra or {}) do
        routes[#routes + 1] = rt
      end
      return new({ host("*", action) }, routes)
    end
    local acme = route{ name = "acme", prefix = "/.well-known/acme-challenge/" }

    it("Route routes insecure requests normally", function()
      local r = with_action("Route")
      assert.equal("app", name_of(r, { path = "/app/x", secure = false }))
    end)

    it("Reject answers rejected for insecure requests only", function()
      local r = with_action("Reject")
      local rt, why = r:match(req{ path = "/app/x", secure = false })
      assert.is_nil(rt)
      assert.equal("rejected", why)
      assert.equal("rejected", name_of(r, { path = "/nothing", secure = false }))
      assert.equal("app", name_of(r, { path = "/app/x", secure = true }))
    end)

    it("Redirect answers redirect where a route matches, no_route elsewhere", function()
      local r = with_action("Redirect")
      local rt, why = r:match(req{ path = "/app/x", secure = false })
      assert.is_nil(rt)
      assert.equal("redirect", why)
      assert.equal("no_route", name_of(r, { path = "/nothing", secure = false }))
      assert.equal("app", name_of(r, { path = "/app/x", secure = true }))
    end)

    it("always routes /.well-known/acme-challenge/", function()
      for _, action in ipairs({ "Reject", "Redirect", "Route" }) do
        local r = with_action(action, { acme })
        assert.equal("acme", name_of(r, { path = "/.well-known/acme-challenge/tok", secure = false }))
      end
    end)

    it("redirects the ACME path when a non-ACME route comes first on a Redirect Host", function()
      local first = route{ name = "catchall", prefix = "/", precedence = 10 }
      local r = with_action("Redirect", { acme, first })
      assert.equal("redirect", name_of(r, { path = "/.well-known/acme-challenge/tok", secure = false }))
      r = with_action("Reject", { acme, first })
      assert.equal("acme", name_of(r, { path = "/.well-known/acme-challenge/tok", secure = false }))
    end)

    it("gives the exception only to the exact prefix, not prefix_exact or longer prefixes", function()
      local exact = route{ name = "exact", prefix = "/.well-known/acme-challenge/", prefix_exact = true }
      local longer = route{ name = "longer", prefix = "/.well-known/acme-challenge/x" }
      local r = with_action("Reject", { exact, longer })
      assert.equal("rejected", name_of(r, { path = "/.well-known/acme-challenge/", secure = false }))
      assert.equal("rejected", name_of(r, { path = "/.well-known/acme-challenge/xyz", secure = false }))
    end)

    it("rejects an unknown insecure_action", function()
      local r, err = router.new({ hosts = { host("*", "Drop") }, routes = {} })
      assert.is_nil(r)
      assert.matches("insecure_action", err, 1, true)
      assert.matches("Drop", err, 1, true)
    end)
  end)

  describe("path", function()
    it("is a plain string prefix, not segment aware", function()
      local r = star{ route{ name = "foo", prefix = "/foo" } }
      assert.equal("foo", name_of(r, { path = "/foobar" }))
      assert.equal("foo", name_of(r, { path = "/foo" }))
      assert.equal("no_route", name_of(r, { path = "/fo" }))
    end)

    it("is case-sensitive by default", function()
      local r = star{ route{ name = "api", prefix = "/api/" } }
      assert.equal("no_route", name_of(r, { path = "/API/x" }))
    end)

    it("ignores case when case_sensitive is false", function()
      local r = star{ route{ name = "api", prefix = "/Api/", case_sensitive = false } }
      assert.equal("api", name_of(r, { path = "/aPI/x" }))
      assert.equal("no_route", name_of(r, { path = "/apx/x" }))
    end)

    it("prefix_exact matches the whole path without the query string", function()
      local r = star{ route{ name = "exact", prefix = "/exact", prefix_exact = true } }
      assert.equal("exact", name_of(r, { path = "/exact" }))
      assert.equal("exact", name_of(r, { path = "/exact?x=1" }))
      assert.equal("no_route", name_of(r, { path = "/exact/" }))
      assert.equal("no_route", name_of(r, { path = "/exactly" }))
      assert.equal("no_route", name_of(r, { path = "/EXACT" }))
    end)

    it("prefix_exact honours case_sensitive false", function()
      local r = star{ route{ name = "exact", prefix = "/exact", prefix_exact = true, case_sensitive = false } }
      assert.equal("exact", name_of(r, { path = "/EXACT?q" }))
    end)

    it("the query string never takes part in a prefix match", function()
      local r = star{ route{ name = "q", prefix = "/a?b" } }
      assert.equal("no_route", name_of(r, { path = "/a?b" }))
      assert.equal("no_route", name_of(r, { path = "/a?bc" }))
    end)

    it("prefix_regex must match the whole path without the query string", function()
      local r = star{ route{ name = "re", prefix = "/v[0-9]+/items", prefix_regex = true } }
      assert.equal("re", name_of(r, { path = "/v12/items" }))
      assert.equal("re", name_of(r, { path = "/v12/items?x=1" }))
      assert.equal("no_route", name_of(r, { path = "/v12/items/extra" }))
      assert.equal("no_route", name_of(r, { path = "/x/v1/items" }))
    end)

    it("prefix_regex stays case-sensitive (Envoy ignores case_sensitive for regex)", function()
      local r = star{ route{ name = "re", prefix = "/v[0-9]+", prefix_regex = true, case_sensitive = false } }
      assert.equal("re", name_of(r, { path = "/v1" }))
      assert.equal("no_route", name_of(r, { path = "/V1" }))
    end)

    it("prefix_regex wins over prefix_exact", function()
      local r = star{ route{ name = "re", prefix = "/a.c", prefix_regex = true, prefix_exact = true } }
      assert.equal("re", name_of(r, { path = "/abc" }))
    end)

    it("reports a route with a bad regex with its source and name", function()
      local r, err = router.new({ hosts = { host("*") }, routes = {
        route{ name = "broken", source = "maps.yaml:12", prefix = "/v(1", prefix_regex = true },
      } })
      assert.is_nil(r)
      assert.matches("^maps%.yaml:12: Mapping broken: prefix: invalid regex", err)
    end)
  end)

  describe("method", function()
    it("matches exactly", function()
      local r = star{ route{ name = "post", method = "POST" } }
      assert.equal("post", name_of(r, { method = "POST" }))
      assert.equal("no_route", name_of(r, { method = "GET" }))
      assert.equal("no_route", name_of(r, { method = "post" }))
    end)

    it("matches the whole method as a regex with method_regex", function()
      local r = star{ route{ name = "read", method = "GET|HEAD", method_regex = true } }
      assert.equal("read", name_of(r, { method = "HEAD" }))
      assert.equal("no_route", name_of(r, { method = "POST" }))
      assert.equal("no_route", name_of(r, { method = "GETX" }))
    end)
  end)

  describe("headers", function()
    local function with_headers(headers)
      return star{ route{ name = "h", headers = headers } }
    end

    it("matches an exact value", function()
      local r = with_headers{ { name = "x-env", value = "prod", regex = false } }
      assert.equal("h", name_of(r, { headers = { ["x-env"] = "prod" } }))
      assert.equal("no_route", name_of(r, { headers = { ["x-env"] = "production" } }))
      assert.equal("no_route", name_of(r, { headers = { ["x-env"] = "Prod" } }))
      assert.equal("no_route", name_of(r, {}))
    end)

    it("matches the whole value against a regex", function()
      local r = with_headers{ { name = "x-v", value = "v[0-9]+", regex = true } }
      assert.equal("h", name_of(r, { headers = { ["x-v"] = "v12" } }))
      assert.equal("no_route", name_of(r, { headers = { ["x-v"] = "v12x" } }))
      assert.equal("no_route", name_of(r, { headers = { ["x-v"] = "av1" } }))
      assert.equal("no_route", name_of(r, {}))
    end)

    it("value true means the header must be present, with any value", function()
      local r = with_headers{ { name = "x-debug", value = true } }
      assert.equal("h", name_of(r, { headers = { ["x-debug"] = "" } }))
      assert.equal("h", name_of(r, { headers = { ["x-debug"] = "anything" } }))
      assert.equal("no_route", name_of(r, {}))
    end)

    it("ANDs every header constraint", function()
      local r = with_headers{
        { name = "x-a", value = "1" },
        { name = "x-b", value = true },
      }
      assert.equal("h", name_of(r, { headers = { ["x-a"] = "1", ["x-b"] = "y" } }))
      assert.equal("no_route", name_of(r, { headers = { ["x-a"] = "1" } }))
      assert.equal("no_route", name_of(r, { headers = { ["x-b"] = "y" } }))
    end)

    it("looks header names up in lower case", function()
      local r = with_headers{ { name = "X-Tenant", value = "acme" } }
      assert.equal("h", name_of(r, { headers = { ["x-tenant"] = "acme" } }))
    end)

    it("sees pseudo-headers such as :authority", function()
      local r = with_headers{ { name = ":authority", value = "api\\..*", regex = true } }
      assert.equal("h", name_of(r, { authority = "api.x" }))
      assert.equal("no_route", name_of(r, { authority = "www.x" }))
    end)

    it("reports a bad header regex", function()
      local r, err = router.new({ hosts = { host("*") }, routes = {
        route{ name = "bad", headers = { { name = "x", value = "(", regex = true } } },
      } })
      assert.is_nil(r)
      assert.matches("Mapping bad: headers: invalid regex", err, 1, true)
    end)
  end)

  describe("no match", function()
    it("answers no_route when no route matches", function()
      local r = star{ route{ name = "a", prefix = "/a/" } }
      local rt, why = r:match(req{ path = "/b/" })
      assert.is_nil(rt)
      assert.equal("no_route", why)
    end)

    it("answers no_route with no routes or no hosts at all", function()
      assert.equal("no_route", name_of(star{}, {}))
      assert.equal("no_route", name_of(new({}, { route{ name = "a" } }), {}))
    end)

    it("raises on a model that is not a table", function()
      assert.has_error(function() router.new(nil) end, "router.new: model must be a table")
    end)
  end)

  describe("query parameters and pseudo-headers", function()
    it("matches exact, presence and regex query parameters, first value, not decoded", function()
      local r = star{
        route{ name = "exact", prefix = "/", query = { { name = "page", value = "2" } } },
        route{ name = "present", prefix = "/", query = { { name = "debug", value = true } } },
        route{ name = "regex", prefix = "/", query = { { name = "id", value = "^[0-9]+$", regex = true } } },
        route{ name = "plain", prefix = "/" },
      }
      assert.equal("exact", name_of(r, { path = "/x?page=2" }))
      assert.equal("exact", name_of(r, { path = "/x?a=1&page=2&page=3" }))
      assert.equal("plain", name_of(r, { path = "/x?page=3&page=2" })) -- the first value counts
      assert.equal("plain", name_of(r, { path = "/x?Page=2" }))       -- names compare exactly
      assert.equal("present", name_of(r, { path = "/x?debug" }))
      assert.equal("present", name_of(r, { path = "/x?debug=" }))
      assert.equal("regex", name_of(r, { path = "/x?id=42" }))
      assert.equal("plain", name_of(r, { path = "/x?id=4%32" }))
      assert.equal("plain", name_of(r, { path = "/x" }))
      assert.equal("plain", name_of(r, { path = "/x?" }))
      assert.equal("plain", name_of(r, { path = "/x?pagex=2&xpage=2" }))
    end)

    it("sees :authority, :method and :path in headers and regex_headers", function()
      local r = star{
        route{ name = "auth", prefix = "/", headers = { { name = ":authority", value = "api\\..*", regex = true } } },
        route{ name = "method", prefix = "/", headers = { { name = ":method", value = "DELETE" } } },
        route{ name = "path", prefix = "/", headers = { { name = ":path", value = ".*[?]v=1$", regex = true } } },
        route{ name = "plain", prefix = "/" },
      }
      assert.equal("auth", name_of(r, { authority = "api.example.com" }))
      assert.equal("method", name_of(r, { method = "DELETE" }))
      assert.equal("path", name_of(r, { path = "/x?v=1" }))
      assert.equal("plain", name_of(r, { path = "/x?v=2" }))
    end)

    it("matches a header by presence (value true), whatever its value", function()
      local r = star{
        route{ name = "flag", prefix = "/", headers = { { name = "x-flag", value = true } } },
        route{ name = "plain", prefix = "/" },
      }
      assert.equal("flag", name_of(r, { headers = { ["x-flag"] = "" } }))
      assert.equal("plain", name_of(r))
    end)
  end)

  describe("canary groups", function()
    it("computes Emissary's cumulative weights: weighted first, weightless share the rest", function()
      assert.same({ { 1 }, { 100 } }, { router.canary_weights({ 10 }) })
      assert.same({ { 1, 2 }, { 50, 100 } }, { router.canary_weights({ false, false }) })
      assert.same({ { 2, 1 }, { 100, 30 } }, { router.canary_weights({ false, 30 }) })
      -- 50 left for 4: round(12.5) = 12 (Python rounds halves to even), the last gets the rest
      assert.same({ { 1, 2, 3, 4, 5 }, { 50, 62, 74, 86, 100 } },
        { router.canary_weights({ 50, false, false, false, false }) })
      -- weights at 100 leave weightless members nothing (scale a canary up, then delete the old one)
      assert.same({ { 2, 1 }, { 100, 100 } }, { router.canary_weights({ false, 100 }) })
      assert.same({ nil, 2, "weight 101 is over 100" }, { router.canary_weights({ 1, 101 }) })
      assert.same({ nil, 2, "the weights of Mappings with the same match add up to 110, over 100" },
        { router.canary_weights({ 60, 50 }) })
    end)

    it("keeps a group together, weighted members first, and splits on one draw", function()
      local r = star{
        route{ name = "old", prefix = "/svc/" },
        route{ name = "other", prefix = "/svc/", headers = { { name = "x", value = "1" } } },
        route{ name = "canary", prefix = "/svc/", weight = 10 },
      }
      assert.same({ "other", "canary", "old" }, names(r))
      assert.equal("canary", name_of(r, { path = "/svc/a", random = 0 }))
      assert.equal("canary", name_of(r, { path = "/svc/a", random = 9 }))
      assert.equal("old", name_of(r, { path = "/svc/a", random = 10 }))
      assert.equal("old", name_of(r, { path = "/svc/a", random = 99 }))
      assert.equal("other", name_of(r, { path = "/svc/a", random = 5, headers = { x = "1" } }))
    end)

    it("lets a draw above every cumulative weight fall through to the next route", function()
      local r = star{
        route{ name = "a", prefix = "/svc/", weight = 20 },
        route{ name = "b", prefix = "/svc/", weight = 30 },
        route{ name = "root", prefix = "/" },
      }
      assert.equal("a", name_of(r, { path = "/svc/x", random = 19 }))
      assert.equal("b", name_of(r, { path = "/svc/x", random = 49 }))
      assert.equal("root", name_of(r, { path = "/svc/x", random = 50 }))
    end)

    it("does not group routes that match differently or sit on different Hosts", function()
      local k = router.group_key
      assert.equal(k(route{ prefix = "/a/" }), k(route{ prefix = "/a/", cluster = 2, weight = 5 }))
      assert.not_equal(k(route{ prefix = "/a/" }), k(route{ prefix = "/a/", prefix_exact = true }))
      assert.not_equal(k(route{ prefix = "/a/" }), k(route{ prefix = "/a/", case_sensitive = false }))
      assert.not_equal(k(route{ prefix = "/a/" }), k(route{ prefix = "/a/", hosts = { 2 } }))
      assert.not_equal(k(route{ prefix = "/a/" }), k(route{ prefix = "/a/", method = "POST" }))
      -- method: GET adds a :method header to Emissary's group id, so it is not the method-less group
      assert.not_equal(k(route{ prefix = "/a/" }), k(route{ prefix = "/a/", method = "GET" }))
      assert.not_equal(k(route{ prefix = "/a/" }), k(route{ prefix = "/a/", query = { { name = "q", value = true } } }))
      assert.equal(k(route{ prefix = "/a/", host = { kind = "glob", value = "A.com" } }),
        k(route{ prefix = "/a/", host = { kind = "exact", value = "a.com" } }))
    end)

    it("refuses weights over 100 in a group, naming the Mapping", function()
      local rt, err = router.new({ hosts = { host("*") }, routes = {
        route{ name = "a", prefix = "/svc/", weight = 70, source = "t.yaml:3" },
        route{ name = "b", prefix = "/svc/", weight = 40, source = "t.yaml:9" },
      } })
      assert.is_nil(rt)
      assert.equal("t.yaml:9: Mapping b: weight: the weights of Mappings with the same match add up to 110, over 100",
        err)
    end)
  end)

  describe("cost", function()
    it("allocates nothing per match once warm", function()
      local r = new({ host("api.example.com"), host("*.example.com"), host("*") }, {
        route{ name = "a", prefix = "/a/", hosts = { 1, 2, 3 },
               headers = { { name = "x-a", value = "1" } } },
        route{ name = "b", prefix = "/b/", hosts = { 1, 2, 3 }, case_sensitive = false },
        route{ name = "grpc", prefix = "/helloworld.Greeter/", hosts = { 1, 2, 3 },
               host = { kind = "glob", value = "*.example.com" }, method = "POST" },
      })
      local q = req{ authority = "api.example.com", path = "/helloworld.Greeter/SayHello",
                     method = "POST" }
      for _ = 1, 3000 do
        assert(r:match(q))
      end
      -- The first rounds may still pay for JIT traces (GC objects too); take the best round.
      local grown = math.huge
      for _ = 1, 3 do
        collectgarbage()
        collectgarbage("stop")
        local before = collectgarbage("count")
        for _ = 1, 2000 do
          r:match(q)
        end
        grown = math.min(grown, collectgarbage("count") - before)
        collectgarbage("restart")
      end
      assert.is_true(grown < 1, "grew " .. grown .. " KB")
    end)
  end)
end)
