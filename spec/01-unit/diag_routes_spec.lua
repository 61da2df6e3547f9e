-- Module diagnostics / readiness_probe / liveness_probe and Emissary's internal Mappings
-- (behaviour notes §5.2, §8; Emissary ir/irambassador.py add_mappings, diagd.py).
local fixtures = require("ambassador_fixtures")
local router = require("nuncio.router")
local config = require("nuncio.config")

local doc, module, mapping = fixtures.doc, fixtures.module, fixtures.mapping

local ADMIN = { address = "127.0.0.1", port = 8877 }

-- text plus a Listener, loaded with an admin listener; asserts no errors
local function ok(text, admin)
  local model, errs, warns = fixtures.load(text .. fixtures.LISTENER, { admin = admin == nil and ADMIN or admin })
  assert.same({}, errs)
  return model, warns
end

local function errors_of(text)
  local model, errs = fixtures.load(text .. fixtures.LISTENER, { admin = ADMIN })
  assert.is_nil(model)
  return errs
end

local function internal(model)
  local out = {}
  for _, r in ipairs(model.routes) do
    if r.internal then
      out[r.name] = r
    end
  end
  return out
end

local function names(model)
  local out = {}
  for i, r in ipairs(model.routes) do
    out[i] = r.name
  end
  return out
end

local function match(model, path, authority)
  local r = assert(router.new(model))
  local rt, why = r:match({ authority = authority or "example.com", path = path, method = "GET", secure = false,
    header = function() return nil end })
  return rt and rt.name or why
end

describe("internal Mappings", function()
  it("route check_alive, check_ready and /ambassador/v0/ to the admin listener by default", function()
    local model, warns = ok(mapping("a"))
    assert.same({}, warns)
    local by = internal(model)
    local alive = by.internal_liveness_probe_mapping
    local ready = by.internal_readiness_probe_mapping
    local diag = by.internal_diagnostics_probe_mapping
    assert.equal("/ambassador/v0/check_alive", alive.prefix)
    assert.equal("/ambassador/v0/check_alive", alive.rewrite) -- rewrite same: the path reaches the admin as sent
    assert.equal("/ambassador/v0/check_ready", ready.prefix)
    assert.equal("/ambassador/v0/check_ready", ready.rewrite)
    assert.equal("/ambassador/v0/", diag.prefix)
    assert.equal("/ambassador/v0/", diag.rewrite)
    for _, r in ipairs({ alive, ready, diag }) do
      local c = model.clusters[r.cluster]
      assert.same({ "127.0.0.1", 8877, false }, { c.host, c.port, c.tls })
      assert.equal(10000, r.timeout_ms)
      assert.equal("(internal)", r.source)
      assert.same({ kind = "glob", value = "*" }, r.host)
    end
    assert.equal(alive.cluster, diag.cluster) -- one cluster for the admin
    -- the user's own route is untouched and the resources summary lists only what was read
    assert.equal("t.yaml:2", fixtures.route(model, "a").source)
    assert.same({ enabled = true, allow_non_local = false }, model.diagnostics)
  end)

  it("are attached to every Host, like a Mapping with hostname \"*\"", function()
    local model = ok(doc("Host", "h1", { "hostname: a.example.com", "requestPolicy: {insecure: {action: Route}}" })
      .. doc("Host", "h2", { "hostname: b.example.com", "requestPolicy: {insecure: {action: Route}}" })
      .. mapping("a"))
    for _, r in pairs(internal(model)) do
      assert.same({ 1, 2 }, r.hosts)
    end
    assert.equal("internal_liveness_probe_mapping", match(model, "/ambassador/v0/check_alive", "b.example.com"))
    assert.equal("internal_diagnostics_probe_mapping", match(model, "/ambassador/v0/diag/", "a.example.com"))
  end)

  it("point at the native config's admin address and port; a wildcard bind is reached on loopback", function()
    local model = ok(mapping("a"), { address = "0.0.0.0", port = 9901 })
    local c = model.clusters[internal(model).internal_diagnostics_probe_mapping.cluster]
    assert.same({ "127.0.0.1", 9901 }, { c.host, c.port })
    model = ok(mapping("a"), { address = "::", port = 9902 })
    c = model.clusters[internal(model).internal_readiness_probe_mapping.cluster]
    assert.same({ "::1", 9902 }, { c.host, c.port })
  end)

  it("do not exist without an admin listener (admin: false, or a loader given none)", function()
    assert.same({ "a" }, names(ok(mapping("a"), false)))
    local model = fixtures.load(mapping("a") .. fixtures.LISTENER)
    assert.same({ "a" }, names(model))
  end)

  it("come from nuncio.config with the native admin address, and not with admin: false", function()
    local tmp = fixtures.temp_files()
    local amb = tmp(mapping("a") .. fixtures.LISTENER)
    local model, errs = config.load { ambassador = { amb } }
    assert.same({}, errs)
    assert.equal(4, #model.routes)
    assert.is_table(internal(model).internal_diagnostics_probe_mapping)
    assert.same({ { kind = "Mapping", name = "a", namespace = "default", source = amb .. ":2",
      api_version = "getambassador.io/v3alpha1", ok = true },
      { kind = "Listener", name = "l", namespace = "default", source = amb .. ":11",
        api_version = "getambassador.io/v3alpha1", ok = true } }, model.resources)
    local native = tmp("admin: {address: 127.0.0.1, port: 18877}\n")
    model = config.load { config = native, ambassador = { amb } }
    local c = model.clusters[internal(model).internal_liveness_probe_mapping.cluster]
    assert.equal(18877, c.port)
    native = tmp("admin: false\n")
    model = config.load { config = native, ambassador = { amb } }
    assert.same({ "a" }, names(model))
    tmp.clean()
  end)

  describe("enabled: false", function()
    for _, case in ipairs({
      { key = "liveness_probe", gone = "internal_liveness_probe_mapping", path = "/ambassador/v0/check_alive" },
      { key = "readiness_probe", gone = "internal_readiness_probe_mapping", path = "/ambassador/v0/check_ready" },
      { key = "diagnostics", gone = "internal_diagnostics_probe_mapping", path = "/ambassador/v0/diag/" },
    }) do
      it("removes the " .. case.key .. " Mapping and only that one", function()
        local model, warns = ok(module({ case.key .. ": {enabled: false}" }) .. mapping("a"))
        assert.same({}, warns)
        local by = internal(model)
        assert.is_nil(by[case.gone])
        local left = 0
        for _ in pairs(by) do
          left = left + 1
        end
        assert.equal(2, left)
        if case.key ~= "diagnostics" then
          -- with the diag prefix still there, the probe's path falls to /ambassador/v0/ (as in Emissary)
          assert.equal("internal_diagnostics_probe_mapping", match(model, case.path))
        else
          assert.equal("no_route", match(model, case.path)) -- 404 through the data port
        end
      end)
    end

    it("on every probe leaves no internal Mapping: /ambassador/v0/ is a 404", function()
      local model = ok(module({ "diagnostics: {enabled: false}", "liveness_probe: {enabled: false}",
        "readiness_probe: {enabled: false}" }) .. mapping("a"))
      assert.same({ "a" }, names(model))
      assert.equal("no_route", match(model, "/ambassador/v0/check_ready"))
      assert.same({ enabled = false, allow_non_local = false }, model.diagnostics)
    end)
  end)

  it("takes the probes' prefix, rewrite and service; the source is the Module's key", function()
    local model = ok(module({ "liveness_probe:", "  prefix: /healthz", "  rewrite: /ambassador/v0/check_alive",
      "readiness_probe: {prefix: /ready, service: 'other:9000'}" }) .. mapping("a"))
    local by = internal(model)
    local alive, ready = by.internal_liveness_probe_mapping, by.internal_readiness_probe_mapping
    assert.same({ "/healthz", "/ambassador/v0/check_alive" }, { alive.prefix, alive.rewrite })
    assert.equal("t.yaml:8", alive.source) -- the line of liveness_probe: in the Module
    assert.same({ "/ready", "/ambassador/v0/check_ready" }, { ready.prefix, ready.rewrite }) -- Emissary: default rewrite
    local c = model.clusters[ready.cluster]
    assert.same({ "other", 9000 }, { c.host, c.port })
    assert.equal("t.yaml:11", ready.source)
    assert.equal("(internal)", by.internal_diagnostics_probe_mapping.source)
    assert.equal("internal_liveness_probe_mapping", match(model, "/healthz"))
  end)

  it("keeps the diag Mapping with allow_non_local: false (it only restricts the admin port)", function()
    local model = ok(module({ "diagnostics: {enabled: true, allow_non_local: false}" }) .. mapping("a"))
    assert.is_table(internal(model).internal_diagnostics_probe_mapping)
    assert.same({ enabled = true, allow_non_local = false }, model.diagnostics)
    model = ok(module({ "diagnostics: {enabled: false, allow_non_local: true}" }) .. mapping("a"))
    assert.is_nil(internal(model).internal_diagnostics_probe_mapping)
    assert.same({ enabled = false, allow_non_local = true }, model.diagnostics)
  end)

  describe("are sorted with the user's Mappings by Emissary's rules", function()
    it("a longer user prefix goes first; a shorter one after the internal ones", function()
      local model = ok(doc("Mapping", "mine", { 'hostname: "*"', "prefix: /ambassador/v0/diag/mine/long/", "service: m" })
        .. doc("Mapping", "root", { 'hostname: "*"', "prefix: /", "service: r" }))
      assert.same({ "mine", "internal_readiness_probe_mapping", "internal_liveness_probe_mapping",
        "internal_diagnostics_probe_mapping", "root" }, names(model))
      assert.equal("mine", match(model, "/ambassador/v0/diag/mine/long/x"))
      assert.equal("internal_diagnostics_probe_mapping", match(model, "/ambassador/v0/diag/"))
      assert.equal("root", match(model, "/ambassador/v1/"))
    end)

    it("precedence puts a user Mapping ahead of a longer internal prefix", function()
      local model = ok(doc("Mapping", "catch", { 'hostname: "*"', "prefix: /ambassador/", "service: c",
        "precedence: 1" }))
      assert.equal("catch", model.routes[1].name)
      assert.equal("catch", match(model, "/ambassador/v0/check_alive"))
    end)

    it("a Mapping with the same match joins the internal one's canary group, as in Emissary", function()
      local model, warns = ok(doc("Mapping", "same", { 'hostname: "*"', "prefix: /ambassador/v0/", "service: s",
        "rewrite: /ambassador/v0/" }))
      assert.same({}, warns)
      local n = 0
      for _, r in ipairs(model.routes) do
        if r.prefix == "/ambassador/v0/" then
          n = n + 1
        end
      end
      assert.equal(2, n)
    end)
  end)

  describe("mistakes in the Module", function()
    it("name the file, line and field", function()
      assert.same({ 't.yaml:8: Module ambassador: config.diagnostics: must be a mapping, not the string "off"' },
        errors_of(module({ "diagnostics: 'off'" })))
      assert.same({ 't.yaml:8: Module ambassador: config.liveness_probe.enabled: must be true or false, '
        .. 'not the string "no"' }, errors_of(module({ "liveness_probe: {enabled: 'no'}" })))
      assert.same({ "t.yaml:9: Module ambassador: config.readiness_probe.prefix: must be a string, not number 5" },
        errors_of(module({ "readiness_probe:", "  prefix: 5" })))
      assert.same({ 't.yaml:8: Module ambassador: config.diagnostics.allow_non_local: must be true or false, '
        .. 'not the string "yes"' }, errors_of(module({ "diagnostics: {allow_non_local: 'yes'}" })))
    end)

    it("refuse a service that is not host[:port]", function()
      local errs = errors_of(module({ "diagnostics:", "  service: http://x/diag" }))
      assert.equal(1, #errs)
      assert.matches("^t%.yaml:9: Module ambassador: config%.diagnostics%.service: a path after the host", errs[1])
    end)

    it("warn about unknown keys inside a probe", function()
      local _, warns = ok(module({ "liveness_probe: {enabled: true, frob: 1}" }) .. mapping("a"))
      assert.same({ "t.yaml:8: Module ambassador: config.liveness_probe.frob: unknown field, ignored" }, warns)
    end)
  end)
end)
