-- Connection timeouts in the model (issue 5): the Module's listener_idle_timeout_ms and
-- cluster_idle_timeout_ms, the Mapping's cluster_idle_timeout_ms (reference/ambassador-behaviour.md
-- §1.10, §5.2), and the native config's request_headers_timeout_ms.
local config = require("nuncio.config")
local fixtures = require("ambassador_fixtures")
local load, doc, contains = fixtures.load, fixtures.doc, fixtures.contains

local LISTENER = fixtures.LISTENER

-- a v3alpha1 Mapping to service (default "up"); extra lines go under spec:
local function mapping(name, extra, service)
  local lines = { 'hostname: "*"', "prefix: /" .. name .. "/", "service: " .. (service or "up"), "grpc: true" }
  for _, l in ipairs(extra or {}) do
    lines[#lines + 1] = l
  end
  return doc("Mapping", name, lines)
end

local module, ok = fixtures.module, fixtures.ok

local function cluster_of(model, route_name)
  for _, r in ipairs(model.routes) do
    if r.name == route_name then
      return model.clusters[r.cluster]
    end
  end
  error("no route " .. route_name)
end

describe("connection timeouts", function()
  describe("Module listener_idle_timeout_ms", function()
    it("defaults to Envoy's hour", function()
      local model = ok(mapping("a"))
      assert.equal(3600000, model.http.listener_idle_timeout_ms)
    end)

    it("is read into model.http, 0 included (no idle timeout), without a 'not implemented' warning", function()
      local model, warns = ok(module({ "listener_idle_timeout_ms: 300" }) .. mapping("a"))
      assert.equal(300, model.http.listener_idle_timeout_ms)
      assert.same({}, warns)
      model = ok(module({ "listener_idle_timeout_ms: 0" }) .. mapping("a"))
      assert.equal(0, model.http.listener_idle_timeout_ms)
    end)

    it("refuses a negative or non-integer value, naming file, line and field", function()
      local model, errs = load(module({ "listener_idle_timeout_ms: -1" }) .. mapping("a") .. LISTENER)
      assert.is_nil(model)
      assert.same({ "t.yaml:8: Module ambassador: config.listener_idle_timeout_ms: must be between 0 and "
        .. "2147483647, not -1" }, errs)
      model, errs = load(module({ 'listener_idle_timeout_ms: "5s"' }) .. mapping("a") .. LISTENER)
      assert.is_nil(model)
      assert.same({ 't.yaml:8: Module ambassador: config.listener_idle_timeout_ms: must be an integer, not '
        .. 'the string "5s"' }, errs)
    end)
  end)

  describe("cluster_idle_timeout_ms", function()
    it("leaves the cluster's idle_timeout_ms unset (the core's 1 h) when neither Module nor Mapping sets it",
      function()
        local model = ok(mapping("a"))
        assert.is_nil(cluster_of(model, "a").idle_timeout_ms)
      end)

    it("takes the Module's value as every cluster's default, without a 'not implemented' warning", function()
      local model, warns = ok(module({ "cluster_idle_timeout_ms: 300" }) .. mapping("a") .. mapping("b", nil, "other"))
      assert.equal(300, cluster_of(model, "a").idle_timeout_ms)
      assert.equal(300, cluster_of(model, "b").idle_timeout_ms)
      assert.same({}, warns)
    end)

    it("lets a Mapping override the Module, 0 (never close) included", function()
      local model, warns = ok(module({ "cluster_idle_timeout_ms: 300" })
        .. mapping("a", { "cluster_idle_timeout_ms: 1500" }) .. mapping("b", { "cluster_idle_timeout_ms: 0" }, "other")
        .. mapping("c", nil, "third"))
      assert.same({}, warns)
      assert.equal(1500, cluster_of(model, "a").idle_timeout_ms)
      assert.equal(0, cluster_of(model, "b").idle_timeout_ms)
      assert.equal(300, cluster_of(model, "c").idle_timeout_ms)
    end)

    it("keeps the first Mapping's value when two sharing an upstream disagree, with a warning", function()
      local model, warns = ok(mapping("a", { "cluster_idle_timeout_ms: 1500" }) .. mapping("b"))
      assert.equal(cluster_of(model, "a"), cluster_of(model, "b"))
      assert.equal(1500, cluster_of(model, "b").idle_timeout_ms)
      assert.is_true(contains(warns, "t.yaml:18: Mapping b: cluster_idle_timeout_ms: Mapping a uses the same "
        .. "upstream with cluster_idle_timeout_ms 1500; nuncio keeps one value per upstream: 1500"),
        table.concat(warns, "\n"))

      model, warns = ok(mapping("a") .. mapping("b", { "cluster_idle_timeout_ms: 1500" }))
      assert.is_nil(cluster_of(model, "b").idle_timeout_ms)
      assert.is_true(contains(warns, "t.yaml:21: Mapping b: cluster_idle_timeout_ms: Mapping a uses the same "
        .. "upstream with cluster_idle_timeout_ms unset (1 h); nuncio keeps one value per upstream: unset (1 h)"),
        table.concat(warns, "\n"))
    end)

    it("says nothing when Mappings sharing an upstream agree", function()
      local _, warns = ok(module({ "cluster_idle_timeout_ms: 300" }) .. mapping("a")
        .. mapping("b", { "cluster_idle_timeout_ms: 300" }))
      assert.same({}, warns)
    end)

    it("refuses a negative value on the Mapping and on the Module", function()
      local model, errs = load(mapping("a", { "cluster_idle_timeout_ms: -5" }) .. LISTENER)
      assert.is_nil(model)
      assert.same({ "t.yaml:11: Mapping a: cluster_idle_timeout_ms: must be between 0 and 2147483647, not -5" }, errs)
      model, errs = load(module({ "cluster_idle_timeout_ms: -5" }) .. mapping("a") .. LISTENER)
      assert.is_nil(model)
      assert.same({ "t.yaml:8: Module ambassador: config.cluster_idle_timeout_ms: must be between 0 and 2147483647, "
        .. "not -5" }, errs)
    end)
  end)

  describe("native request_headers_timeout_ms", function()
    local native = fixtures.temp_files()
    after_each(native.clean)

    it("defaults to 10 s (Envoy has none)", function()
      local model = config.load {}
      assert.equal(10000, model.request_headers_timeout_ms)
    end)

    it("reads a value, 0 (no limit) included, without an unknown-key warning", function()
      local model, errs, warns = config.load { config = native("request_headers_timeout_ms: 300\n") }
      assert.same({}, errs)
      assert.equal(300, model.request_headers_timeout_ms)
      for _, w in ipairs(warns) do
        assert.is_nil(w:find("request_headers_timeout_ms", 1, true), w)
      end
      model = config.load { config = native("request_headers_timeout_ms: 0\n") }
      assert.equal(0, model.request_headers_timeout_ms)
    end)

    it("refuses a negative or non-integer value with file and line", function()
      local p = native("workers: 1\nrequest_headers_timeout_ms: -1\n")
      local model, errs = config.load { config = p }
      assert.is_nil(model)
      assert.same({ p .. ":2: request_headers_timeout_ms: must be an integer between 0 and 2147483647 (0: no limit), "
        .. "not number -1" }, errs)
      p = native("request_headers_timeout_ms: 1.5\n")
      model, errs = config.load { config = p }
      assert.is_nil(model)
      assert.same({ p .. ":1: request_headers_timeout_ms: must be an integer between 0 and 2147483647 (0: no limit), "
        .. "not number 1.5" }, errs)
    end)
  end)
end)
