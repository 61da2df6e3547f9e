local router = require("nuncio.router")

-- The candidate index (router.lua "Candidate index") must give exactly the answer of the
-- plain scan in evaluation order (r:match_linear), including how many random values a
-- canary selection draws. Randomized route sets over small pools of hosts, prefixes and
-- constraints so that routes collide, share segments and form canary groups.

local AUTHORITIES = { "a.com", "A.com", "b.com", "a.com:80", "x.b.com", "api.x", "", "h1.example.com" }
local PREFIXES = { "/", "/a", "/a/", "/A/", "/a/b/", "/a/b", "/svc.S/", "/svc.S/M", "/svc.T/", "//",
                   "/.well-known/acme-challenge/", "a/b/", "" }
local REGEXES = { "/a/.*", "/svc\\.S/.*", ".*", "/[ab]/b" }
local PATHS = { "/", "/a", "/a/", "/A/", "/a/b/c", "/a/b", "/svc.S/M", "/svc.S/N?x=1", "/svc.T/", "//",
                "/svc.S", "/.well-known/acme-challenge/tok", "/a?b/c", "/a/b/?q=2&y", "a/b/c", "",
                "/b/b", "/A/B/" }

local function pick(t)
  return t[math.random(#t)]
end

local function random_route(i, nhosts)
  local r = {
    name = "r" .. i, namespace = "default", source = "spec:" .. i,
    prefix = pick(PREFIXES), prefix_regex = false, prefix_exact = false, case_sensitive = true,
    rewrite = "/", headers = {}, precedence = 0, grpc = false, cluster = 1, timeout_ms = 0,
    hosts = { math.random(nhosts) },
  }
  local roll = math.random(10)
  if roll == 1 then
    r.prefix_regex, r.prefix = true, pick(REGEXES)
  elseif roll == 2 then
    r.prefix_exact = true
  end
  if math.random(6) == 1 then
    r.case_sensitive = false
  end
  roll = math.random(8)
  if roll <= 3 then
    r.host = { kind = "glob", value = pick(AUTHORITIES) }
  elseif roll == 4 then
    r.host = { kind = "glob", value = pick({ "*", "*.com", "a.*", "*b.com" }) }
  elseif roll == 5 then
    r.host = { kind = "exact", value = pick(AUTHORITIES) }
  elseif roll == 6 then
    r.host = { kind = "regex", value = pick({ "a\\.com", ".*\\.com", "[ab]\\.com(:80)?" }) }
  end
  if math.random(5) == 1 then
    r.method = pick({ "GET", "POST" })
  end
  if math.random(6) == 1 then
    r.headers = { { name = "x-a", value = pick({ "1", "2", true }), regex = false } }
  end
  if math.random(8) == 1 then
    r.query = { { name = "x", value = pick({ "1", true }), regex = false } }
  end
  if math.random(8) == 1 then
    r.precedence = math.random(-1, 1)
  end
  if math.random(4) == 1 then
    r.weight = math.random(0, 30)
  end
  if math.random(10) == 1 then
    r.hosts[2] = math.random(nhosts)
  end
  return r
end

local function random_model(nroutes)
  local hosts = {}
  local nhosts = math.random(3)
  for i = 1, nhosts do
    hosts[i] = {
      name = "h" .. i, source = "spec:h" .. i,
      hostname = pick({ "*", "*", "a.com", "*.com", "b.*", "A.COM" }),
      insecure_action = pick({ "Route", "Route", "Redirect", "Reject" }),
    }
  end
  local routes = {}
  for i = 1, nroutes do
    routes[i] = random_route(i, nhosts)
  end
  return { hosts = hosts, routes = routes, clusters = {} }
end

local function random_req()
  local headers = {}
  if math.random(2) == 1 then
    headers["x-a"] = pick({ "1", "2" })
  end
  return {
    authority = pick(AUTHORITIES), path = pick(PATHS), method = pick({ "GET", "POST" }),
    secure = math.random(2) == 1,
    header = function(name) return headers[name] end,
    random = math.random(3) == 1 and math.random(0, 99) or nil,
  }
end

-- The route, why and the next random number after the selection (it tells whether the
-- selection drew one).
local function outcome(r, method, req, seed)
  math.randomseed(seed)
  local route, why = r[method](r, req)
  return route and route.name or "-", why or "-", math.random(1, 1000000)
end

describe("nuncio.router index", function()
  it("agrees with the linear scan on randomized route sets", function()
    math.randomseed(7)
    local models, requests = 0, 0
    for m = 1, 400 do
      local model = random_model(math.random(1, 40))
      local r = router.new(model)
      if r then -- canary weights over 100 are an error in both
        models = models + 1
        for q = 1, 60 do
          local req = random_req()
          local seed = m * 1000 + q
          local n1, w1, x1 = outcome(r, "match_linear", req, seed)
          local n2, w2, x2 = outcome(r, "match", req, seed)
          if n1 ~= n2 or w1 ~= w2 or x1 ~= x2 then
            error(string.format("model %d request %s %s%s secure=%s random=%s: linear %s/%s/%d, index %s/%s/%d",
              m, req.method, req.authority, req.path, tostring(req.secure), tostring(req.random),
              n1, w1, x1, n2, w2, x2))
          end
          requests = requests + 1
          math.randomseed(seed + 7) -- keep the generator's own sequence going
        end
      end
    end
    assert.is_true(models > 200)
    assert.is_true(requests > 12000)
  end)

  it("finds a route among 10 000 on distinct hosts and prefixes", function()
    local routes = {}
    for i = 1, 10000 do
      routes[i] = {
        name = "m" .. i, namespace = "default", source = "spec:" .. i,
        prefix = "/svc" .. i .. ".S/", prefix_regex = false, prefix_exact = false, case_sensitive = true,
        rewrite = "/", host = { kind = "glob", value = "h" .. i .. ".example.com" }, headers = {},
        precedence = 0, grpc = true, cluster = 1, timeout_ms = 0, hosts = { 1 },
      }
    end
    local r = assert(router.new({ hosts = { { name = "h", hostname = "*" } }, routes = routes, clusters = {} }))
    local function req(authority, path)
      return { authority = authority, path = path, method = "POST", secure = true,
               header = function() return nil end }
    end
    assert.equal("m1", r:match(req("h1.example.com", "/svc1.S/M")).name)
    assert.equal("m9999", r:match(req("H9999.example.com", "/svc9999.S/M?q")).name)
    assert.same({ nil, "no_route" }, { r:match(req("h1.example.com", "/svc2.S/M")) })
    assert.same({ nil, "no_route" }, { r:match(req("h1.example.com:80", "/svc1.S/M")) })
    r, routes = nil, nil
    -- Leave the heap about as we found it: the traces compiled for the randomized routes
    -- above hold ~3 MB of GC memory, and a larger live heap slows the GC's pace, which
    -- yaml_spec's "does not keep loaded tables alive" budget (2 MB) is sensitive to.
    jit.flush()
    collectgarbage()
  end)
end)
