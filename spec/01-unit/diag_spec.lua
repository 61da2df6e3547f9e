-- nuncio.diag: Ambassador's /ambassador/v0/diag/ page and its JSON (diagd's names),
-- rendered from real models (nuncio.config.load on temporary files).
local diag = require("nuncio.diag")
local config = require("nuncio.config")
local fixtures = require("ambassador_fixtures")

local doc, mapping = fixtures.doc, fixtures.mapping

---------------------------------------------------------------------------
-- a small, strict JSON decoder, independent of the encoder under test: arrays come
-- back with the metatable ARR so [] and {} can be told apart

local ARR = { __name = "array" }
local OBJ = { __name = "object" }
local NULL = setmetatable({}, { __name = "null" })

local function decode(s)
  local pos = 1
  local function ws()
    pos = s:find("[^ \t\r\n]", pos) or #s + 1
  end
  local function fail(msg)
    error(string.format("JSON: %s at byte %d: %q", msg, pos, s:sub(pos, pos + 20)), 0)
  end
  local value
  local function str()
    pos = pos + 1
    local out = {}
    while true do
      local c = s:sub(pos, pos)
      if c == "" then
        fail("unterminated string")
      elseif c == '"' then
        pos = pos + 1
        return table.concat(out)
      elseif c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
        if map[e] then
          out[#out + 1] = map[e]
          pos = pos + 2
        elseif e == "u" then
          local hex = s:sub(pos + 2, pos + 5)
          assert(hex:match("^%x%x%x%x$"), "bad \\u")
          local n = tonumber(hex, 16)
          assert(n < 0x80, "the spec decoder only needs ASCII escapes")
          out[#out + 1] = string.char(n)
          pos = pos + 6
        else
          fail("bad escape")
        end
      elseif c:byte() < 0x20 then
        fail("raw control character in a string")
      else
        out[#out + 1] = c
        pos = pos + 1
      end
    end
  end
  value = function()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local t = setmetatable({}, OBJ)
      ws()
      if s:sub(pos, pos) == "}" then
        pos = pos + 1
        return t
      end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("key expected") end
        local k = str()
        ws()
        if s:sub(pos, pos) ~= ":" then fail(": expected") end
        pos = pos + 1
        t[k] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return t end
        if d ~= "," then fail(", or } expected") end
      end
    elseif c == "[" then
      pos = pos + 1
      local t = setmetatable({}, ARR)
      ws()
      if s:sub(pos, pos) == "]" then
        pos = pos + 1
        return t
      end
      while true do
        t[#t + 1] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return t end
        if d ~= "," then fail(", or ] expected") end
      end
    elseif c == '"' then
      return str()
    elseif s:sub(pos, pos + 3) == "true" then
      pos = pos + 4
      return true
    elseif s:sub(pos, pos + 4) == "false" then
      pos = pos + 5
      return false
    elseif s:sub(pos, pos + 3) == "null" then
      pos = pos + 4
      return NULL
    end
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    if not num or num == "" then fail("value expected") end
    pos = pos + #num
    return tonumber(num)
  end
  local v = value()
  ws()
  if pos <= #s then fail("trailing bytes") end
  return v
end

---------------------------------------------------------------------------

local tmp = fixtures.temp_files()

-- config.load on one Ambassador file (admin on, as nuncio runs) -> model, path
local function load(text)
  local path = tmp(text .. fixtures.LISTENER)
  local model, errs = config.load { ambassador = { path } }
  assert.same({}, errs)
  return model, path
end

local function json(state, query)
  query = query or {}
  query.json = query.json or "true"
  local status, ctype, body = diag.render(state, query)
  assert.equal("application/json", ctype)
  return decode(body), status, body
end

local function html(state, query)
  local status, ctype, body = diag.render(state, query or {})
  assert.equal("text/html; charset=utf-8", ctype)
  return body, status
end

local TWO_GRPC = doc("Mapping", "greeter", { 'hostname: "*"', "prefix: /helloworld.Greeter/", "rewrite: ''",
  "grpc: true", "service: 127.0.0.1:50051" })
  .. doc("Mapping", "echo", { 'hostname: "*"', "prefix: /echo.EchoService/", "rewrite: ''", "grpc: true",
    "service: 127.0.0.1:50052", "precedence: 1" })

describe("nuncio.diag", function()
  after_each(tmp.clean)

  describe("JSON encoder", function()
    it("escapes quotes, backslashes and control characters; non-finite numbers are null", function()
      local s = diag.json(diag.object({ s = 'a"b\\c\n\t\1\127</x>', nan = 0 / 0, inf = 1 / 0, ninf = -1 / 0,
        int = 42, neg = -3, frac = 0.25, big = 2 ^ 60, yes = true, no = false }))
      assert.equal('{"big":1.152921504606847e+18,"frac":0.25,"inf":null,"int":42,"nan":null,"neg":-3,'
        .. '"ninf":null,"no":false,"s":"a\\"b\\\\c\\n\\t\\u0001\\u007f</x>","yes":true}', s)
      local back = decode(s)
      assert.equal('a"b\\c\n\t\1\127</x>', back.s)
    end)

    it("renders what the caller marks: an empty list as [], an empty map as {}", function()
      assert.equal("[]", diag.json(diag.array()))
      assert.equal("{}", diag.json(diag.object()))
      assert.equal('{"l":[1,"2",[]],"m":{"k":{}}}', diag.json(diag.object({ l = diag.array({ 1, "2", diag.array() }),
        m = diag.object({ k = diag.object() }) })))
    end)

    it("cuts a cycle instead of looping", function()
      local t = diag.object()
      t.self = t
      assert.matches("null", diag.json(t))
    end)
  end)

  describe("?json=true", function()
    it("lists routes in evaluation order with file:line sources, clusters and services", function()
      local model, path = load(TWO_GRPC .. mapping("plain"))
      local o, status = json({ model = model, errors = {}, warnings = {}, generation = 1, version = "0.9",
        started = 1000, now = 4725 })
      assert.equal(200, status)
      assert.equal(getmetatable(o.route_info), ARR)
      assert.equal(#model.routes, #o.route_info)
      for i, r in ipairs(model.routes) do
        local ri = o.route_info[i]
        assert.equal(r.name, ri.name)
        assert.equal(r.source, ri.source)
        assert.equal(r.source, ri._source)
        assert.equal(model.clusters[r.cluster].name, ri.clusters[1].name)
        assert.equal(100, ri.clusters[1].weight)
        assert.equal(i, ri.index)
      end
      -- precedence 1 first, then the longer prefixes (Emissary's order); sources are file:line
      assert.same({ "echo", "internal_readiness_probe_mapping", "internal_liveness_probe_mapping", "greeter",
        "internal_diagnostics_probe_mapping", "plain" }, (function()
        local n = {}
        for i, ri in ipairs(o.route_info) do n[i] = ri.name end
        return n
      end)())
      assert.equal(path .. ":13", o.route_info[1].source)
      assert.equal("127.0.0.1:50052", o.route_info[1].clusters[1].service)
      assert.equal("http://*/echo.EchoService/", o.route_info[1].key)
      assert.equal(1, o.route_info[1].precedence)
      assert.is_true(o.route_info[1].grpc)
      local internal = 0
      for _, ri in ipairs(o.route_info) do
        if ri.internal then
          internal = internal + 1
          assert.equal("(internal)", ri.source)
          assert.equal("private", ri.diag_class)
        else
          assert.matches("^" .. path:gsub("%p", "%%%0") .. ":%d+$", ri.source)
        end
      end
      assert.equal(3, internal)
      -- diagd's system block
      assert.equal("0.9", o.system.version)
      assert.equal("1 hour, 2 minutes, 5 seconds", o.system.hr_uptime)
      assert.equal("1970-01-01T00:16:40Z", o.system.boot_time)
      assert.is_true(o.system.env_good)
      assert.equal(1, o.nuncio.generation)
      -- clusters by name (diagd's cluster_info) and in order
      assert.equal("127.0.0.1:50051", o.cluster_info["127_0_0_1_50051"].service)
      assert.is_true(o.cluster_info["127_0_0_1_50051"].http2)
      assert.equal(#model.clusters, #o.clusters)
      -- resources with file:line, keyed like diagd's source map
      assert.equal("Mapping", o.ambassador_resources[path .. ":2"].kind)
      assert.equal("greeter", o.ambassador_resources[path .. ":2"].name)
      assert.is_true(o.source_map[path][path .. ":13"])
      assert.equal(4, #o.resources) -- three Mappings and the Listener
      assert.equal(1, #o.listeners)
      assert.equal("*", o.hosts[1].hostname)
      assert.equal(getmetatable(o.errors), ARR)
      assert.equal(0, #o.errors)
    end)

    it("shows the live counters and the mean latency of each route", function()
      local model = load(TWO_GRPC)
      local o = json({ model = model, route_stats = {
        greeter = { requests = 4, errors_5xx = 1, grpc_errors = 2, seconds_sum = 0.02 },
        [1] = { requests = 7, errors_5xx = 0, grpc_errors = 0, seconds_sum = 0 },
      } })
      local by = {}
      for _, ri in ipairs(o.route_info) do
        by[ri.name] = ri
      end
      assert.same({ requests = 4, errors_5xx = 1, grpc_errors = 2, seconds_sum = 0.02, mean_ms = 5 },
        setmetatable(by.greeter.stats, nil))
      assert.equal(7, o.route_info[1].stats.requests) -- by index: route 1 is echo
      assert.equal(0, o.route_info[1].stats.mean_ms)
      local body = html({ model = model, route_stats = { greeter = { requests = 4, errors_5xx = 1, grpc_errors = 2,
        seconds_sum = 0.02 } } })
      assert.matches('<td class="requests num">4</td><td class="errors%-5xx num err">1</td>'
        .. '<td class="grpc%-errors num err">2</td><td class="latency num">5%.0 ms</td>', body)
    end)

    it("keeps TLS keys out", function()
      local model = load(TWO_GRPC)
      model.tls_contexts = { { name = "ctx", hostnames = { "a.example" }, cert_chain_pem = "CERT",
        private_key_pem = "-----BEGIN PRIVATE KEY-----", alpn_protocols = { "h2" }, source = "x.yaml:3" } }
      local _, _, body = json({ model = model })
      assert.is_nil(body:find("PRIVATE KEY", 1, true))
      assert.is_nil(body:find("CERT", 1, true))
      assert.matches('"tlscontexts":%[{"alpn_protocols":%["h2"%]', body)
    end)

    it("answers 503 before any configuration loaded, with the errors that stopped it", function()
      local o, status = json({ errors = { "a.yaml:3: Mapping m: prefix: required" } })
      assert.equal(503, status)
      assert.is_false(o.system.env_good)
      assert.equal(0, #o.route_info)
      assert.equal("a.yaml:3", o.errors[1].source)
    end)

    it("gives any top-level key with filter=KEY, null for an unknown one, as diagd does", function()
      local model = load(TWO_GRPC)
      local system = json({ model = model, version = "0.7" }, { filter = "system" })
      assert.equal("0.7", system.version)
      assert.equal(NULL, (json({ model = model }, { filter = "bogus" })))
      -- any json value diagd would take as true is JSON; false/0/empty is the page
      local _, _, body = diag.render({ model = model }, { json = "bogus" })
      assert.equal("{", body:sub(1, 1))
      html({ model = model }, { json = "false" })
      html({ model = model }, { json = "" })
    end)
  end)

  describe("?json=true&filter=errors", function()
    it("is [] for a clean config (Emissary's gRPC KAT)", function()
      local model = load(TWO_GRPC)
      local errs, status, body = json({ model = model, errors = {} }, { filter = "errors" })
      assert.equal(200, status)
      assert.equal("[]\n", body)
      assert.equal(ARR, getmetatable(errs))
    end)

    it("lists a broken Mapping's error with its file:line, kind and name", function()
      local path = tmp(TWO_GRPC .. doc("Mapping", "broken", { 'hostname: "*"', "prefix: /b/", "service: b",
        "load_balancer: {policy: fastest}" }) .. fixtures.LISTENER)
      local model, errs = config.load { ambassador = { path } }
      assert.is_nil(model)
      assert.equal(1, #errs)
      -- the previous model keeps serving; the failed reload's errors are what the page shows
      local old = load(TWO_GRPC)
      local list = json({ model = old, errors = errs, reloads = { ok = 1, failed = 1 },
        last_reload = { time = 5, ok = false } }, { filter = "errors" })
      assert.equal(1, #list)
      assert.equal(path .. ":33", list[1].source)
      assert.equal("Mapping", list[1].kind)
      assert.equal("broken", list[1].name)
      assert.matches("^load_balancer%.policy: ", list[1].error)
      assert.equal(errs[1], list[1].text)
      local o = json({ model = old, errors = errs })
      assert.same({ "load_balancer.policy: " }, { o.errors_by_source[path .. ":33"][1].error:match("^%S+ ") })
      assert.is_false(o.system.env_good)
    end)

    it("keeps YAML syntax errors and path errors readable", function()
      local e = diag.parse_error("f.yaml:3:7: did not find expected key")
      assert.same({ "f.yaml:3", "did not find expected key" }, { e.source, e.error })
      e = diag.parse_error("/etc/nuncio/missing: No such file or directory")
      assert.same({ "", "/etc/nuncio/missing: No such file or directory" }, { e.source, e.error })
      e = diag.parse_error("c.yaml:9: workers: must be an integer >= 1, not the string \"x\"")
      assert.same({ "c.yaml:9", nil }, { e.source, e.kind })
    end)
  end)

  describe("the HTML page", function()
    it("escapes names and paths that come from users", function()
      local model = load(doc("Mapping", "x", { 'hostname: "*"', 'prefix: "/<script>alert(1)</script>/"',
        "service: s" }))
      model.routes[1].name = "<script>alert('n')</script>" -- Kubernetes would refuse it; a file does not
      local body = html({ model = model, errors = { 'e.yaml:1: Mapping <b>: prefix: "<img src=x>"' },
        warnings = { "w.yaml:2: Host h & co: x: <i>" } })
      assert.is_nil(body:find("<script>", 1, true))
      assert.is_nil(body:find("<img", 1, true))
      assert.is_nil(body:find("<b>", 1, true))
      assert.is_nil(body:find("<i>", 1, true))
      assert.truthy(body:find("&lt;script&gt;alert(&#39;n&#39;)&lt;/script&gt;", 1, true))
      assert.truthy(body:find("/&lt;script&gt;alert(1)&lt;/script&gt;/", 1, true))
      assert.truthy(body:find("Host h &amp; co", 1, true))
    end)

    it("has the route table in evaluation order, the errors in a red box, and warnings", function()
      local model, path = load(TWO_GRPC .. mapping("plain"))
      local body, status = html({ model = model, errors = { path .. ":5: Mapping greeter: grpc: broken" },
        warnings = { path .. ":3: Mapping greeter: frob: unknown field, ignored" }, generation = 3,
        reloads = { ok = 2, failed = 1 }, version = "0.9", started = 0, now = 61 })
      assert.equal(200, status)
      assert.truthy(body:find("<!DOCTYPE html>", 1, true))
      assert.is_nil(body:find("<link rel=\"stylesheet", 1, true)) -- self-contained
      assert.is_nil(body:find("src=\"http", 1, true))
      assert.is_nil(body:find("<script", 1, true))
      local names = {}
      for name in body:gmatch('<tr class="route[^"]*" data%-index="%d+" data%-name="([^"]*)"') do
        names[#names + 1] = name
      end
      local want = {}
      for i, r in ipairs(model.routes) do
        want[i] = r.name
      end
      assert.same(want, names)
      assert.truthy(body:find('<section id="errors" class="errors">', 1, true))
      assert.truthy(body:find('<li class="error"><span class="source">' .. path .. ':5</span>', 1, true))
      assert.truthy(body:find('<li class="warning"><span class="source">' .. path .. ":3</span>", 1, true))
      assert.truthy(body:find('<dd id="generation">3</dd>', 1, true))
      assert.truthy(body:find('<dd id="reloads-failed">1</dd>', 1, true))
      assert.truthy(body:find('<dd id="uptime">1 minute, 1 second</dd>', 1, true))
      assert.truthy(body:find('<td class="source mono">' .. path .. ":13</td>", 1, true))
      assert.truthy(body:find('<table id="clusters">', 1, true))
      assert.truthy(body:find('<table id="listeners">', 1, true))
      assert.truthy(body:find('<table id="hosts">', 1, true))
    end)

    it("says so when there are no errors", function()
      local body = html({ model = load(TWO_GRPC) })
      assert.truthy(body:find('<p id="no-errors">', 1, true))
      assert.is_nil(body:find('id="errors"', 1, true))
    end)
  end)

  describe("allow_non_local (diagd's _allow_diag_ui)", function()
    it("hides the page from non-local clients only when diagnostics are disabled without it", function()
      local off = load(fixtures.module({ "diagnostics: {enabled: false}" }) .. TWO_GRPC)
      assert.equal(404, (diag.render({ model = off, peer_local = false }, { json = "true" })))
      assert.equal(200, (diag.render({ model = off, peer_local = true }, { json = "true" })))
      assert.equal(200, (diag.render({ model = off }, {}))) -- the admin did not say: served
      local open = load(fixtures.module({ "diagnostics: {enabled: false, allow_non_local: true}" }) .. TWO_GRPC)
      assert.equal(200, (diag.render({ model = open, peer_local = false }, {})))
      local on = load(TWO_GRPC)
      assert.equal(200, (diag.render({ model = on, peer_local = false }, {})))
    end)
  end)
end)
