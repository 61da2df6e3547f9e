-- retry_policy, load_balancer, idle_timeout_ms (Mapping and Module defaults) and the
-- native config's endpoints / outlier_detection -> model.policies, clusters[i].lb,
-- clusters[i].endpoints (behaviour notes §1.10, §1.12)
local config = require("nuncio.config")
local policy = require("nuncio.ambassador.policy")
local fixtures = require("ambassador_fixtures")

local load, doc = fixtures.load, fixtures.doc

local LISTENER = fixtures.LISTENER

local function model_of(body, extra)
  local lines = { 'hostname: "*"', "prefix: /p/", "service: up:9000" }
  for _, l in ipairs(body) do
    lines[#lines + 1] = l
  end
  local model, errs, warns = load(doc("Mapping", "m", lines) .. (extra or "") .. LISTENER)
  assert.same({}, errs)
  assert.same({}, warns)
  return model
end

local function errors_of(body, extra)
  local lines = { 'hostname: "*"', "prefix: /p/", "service: up:9000" }
  for _, l in ipairs(body) do
    lines[#lines + 1] = l
  end
  local model, errs = load(doc("Mapping", "m", lines) .. (extra or "") .. LISTENER)
  assert.is_nil(model)
  return errs
end

local DEFAULT = { retry_on = {}, num_retries = 0, per_try_timeout_ms = 0, retriable_status_codes = {} }

describe("upstream policies", function()
  describe("retry_policy", function()
    it("becomes the route's policy, with Envoy's num_retries default of 1", function()
      local model = model_of({ "retry_policy: {retry_on: 5xx}" })
      assert.same({ DEFAULT, { retry_on = { "5xx" }, num_retries = 1, per_try_timeout_ms = 0,
        retriable_status_codes = {} } }, model.policies)
      assert.equal(2, model.routes[1].policy)
    end)

    it("reads Envoy's comma list, the gRPC conditions, per_try_timeout and status codes", function()
      local model = model_of({ "retry_policy:", '  retry_on: "unavailable, connect-failure,retriable-status-codes"',
        "  num_retries: 3", '  per_try_timeout: "0.5s"', "  retriable_status_codes: [409, 503]" })
      assert.same({ retry_on = { "unavailable", "connect-failure", "retriable-status-codes" }, num_retries = 3,
        per_try_timeout_ms = 500, retriable_status_codes = { 409, 503 } }, model.policies[2])
    end)

    it("shares one policy between Mappings that ask the same", function()
      local model, errs = load(doc("Mapping", "a", { 'hostname: "*"', "prefix: /a/", "service: up",
        "retry_policy: {retry_on: gateway-error, num_retries: 2}" })
        .. doc("Mapping", "b", { 'hostname: "*"', "prefix: /b/", "service: up",
          "retry_policy: {retry_on: gateway-error, num_retries: 2}" })
        .. doc("Mapping", "c", { 'hostname: "*"', "prefix: /c/", "service: up" }) .. LISTENER)
      assert.same({}, errs)
      assert.equal(2, #model.policies)
      local by_name = {}
      for _, r in ipairs(model.routes) do
        by_name[r.name] = r.policy
      end
      assert.same({ a = 2, b = 2, c = 1 }, by_name)
    end)

    it("takes the Module's retry_policy as the default, and a Mapping's own over it", function()
      local module = doc("Module", "ambassador", { "config:", "  retry_policy: {retry_on: reset, num_retries: 4}" })
      local model = model_of({}, module)
      assert.same({ "reset" }, model.policies[model.routes[1].policy].retry_on)
      assert.equal(4, model.policies[model.routes[1].policy].num_retries)
      model = model_of({ "retry_policy: {retry_on: 5xx}" }, module)
      assert.same({ "5xx" }, model.policies[model.routes[1].policy].retry_on)
    end)

    it("refuses unknown conditions, bad durations and missing retry_on with the line", function()
      local errs = errors_of({ "retry_policy: {retry_on: sometimes}" })
      assert.equal(1, #errs)
      assert.matches('t.yaml:10: Mapping m: retry_policy.retry_on: "sometimes" is not a retry condition', errs[1],
        1, true)
      errs = errors_of({ "retry_policy: {retry_on: 5xx, per_try_timeout: soon}" })
      assert.matches("retry_policy.per_try_timeout: must be a duration", errs[1], 1, true)
      errs = errors_of({ "retry_policy: {num_retries: 2}" })
      assert.matches("retry_policy.retry_on: required", errs[1], 1, true)
      errs = errors_of({ "retry_policy: {retry_on: 5xx, num_retries: 99}" })
      assert.matches("retry_policy.num_retries: must be between 0 and 10", errs[1], 1, true)
    end)

    it("parses durations in the protobuf and Go forms", function()
      assert.equal(500, policy.parse_duration_ms("0.5s"))
      assert.equal(250, policy.parse_duration_ms("250ms"))
      assert.equal(120000, policy.parse_duration_ms("2m"))
      assert.is_nil(policy.parse_duration_ms("5"))
      assert.is_nil(policy.parse_duration_ms("1x"))
    end)
  end)

  describe("idle_timeout_ms", function()
    it("goes into the route's policy", function()
      local model = model_of({ "idle_timeout_ms: 1500" })
      assert.equal(1500, model.policies[model.routes[1].policy].idle_timeout_ms)
      assert.is_nil(model.policies[1].idle_timeout_ms) -- the default: the C core's 300000
    end)
  end)

  describe("load_balancer", function()
    it("defaults to round robin and gives least_request its own cluster", function()
      local model, errs = load(doc("Mapping", "a", { 'hostname: "*"', "prefix: /a/", "service: up:9000" })
        .. doc("Mapping", "b", { 'hostname: "*"', "prefix: /b/", "service: up:9000",
          "load_balancer: {policy: least_request}" }) .. LISTENER)
      assert.same({}, errs)
      assert.equal(2, #model.clusters)
      assert.same({ policy = "round_robin" }, model.clusters[1].lb)
      assert.same({ policy = "least_request" }, model.clusters[2].lb)
      assert.same({ "up_9000", "up_9000_least_request" }, { model.clusters[1].name, model.clusters[2].name })
    end)

    it("reads ring_hash / maglev with exactly one hash key", function()
      local model = model_of({ "load_balancer: {policy: ring_hash, header: X-User}" })
      assert.same({ policy = "ring_hash", hash = { header = "x-user" } }, model.clusters[1].lb)
      model = model_of({ "load_balancer: {policy: maglev, cookie: {name: sticky}}" })
      assert.same({ policy = "maglev", hash = { cookie = "sticky" } }, model.clusters[1].lb)
      model = model_of({ "load_balancer: {policy: ring_hash, source_ip: true}" })
      assert.same({ policy = "ring_hash", hash = { source_ip = true } }, model.clusters[1].lb)
    end)

    it("refuses what Emissary refuses", function()
      assert.matches('"random" is not a load balancer policy',
        errors_of({ "load_balancer: {policy: random}" })[1], 1, true)
      assert.matches("load_balancer.header: is only read with policy ring_hash or maglev",
        errors_of({ "load_balancer: {policy: round_robin, header: x}" })[1], 1, true)
      assert.matches("ring_hash needs exactly one of header, cookie or source_ip",
        errors_of({ "load_balancer: {policy: ring_hash}" })[1], 1, true)
    end)
  end)

  describe("native endpoints and outlier_detection", function()
    local tmp = fixtures.temp_files()
    after_each(tmp.clean)

    local AMB = doc("Mapping", "m", { 'hostname: "*"', "prefix: /p/", "service: greeter:50051" }) .. LISTENER

    it("give the Mapping's service its endpoints", function()
      local amb = tmp(AMB)
      local native = tmp("ambassador: [" .. amb .. "]\nendpoints:\n  greeter:50051: [10.0.0.1:50051, '[::1]:7']\n"
        .. "outlier_detection: {consecutive_failures: 2, base_ejection_time_ms: 500}\n")
      local model, errs, warns = config.load { config = native }
      assert.same({}, errs)
      assert.same({}, warns)
      assert.same({ { host = "10.0.0.1", port = 50051 }, { host = "::1", port = 7 } }, model.clusters[1].endpoints)
      assert.same({ consecutive_failures = 2, base_ejection_time_ms = 500, max_ejection_percent = 10 },
        model.outlier_detection)
    end)

    it("say which entry is wrong, and which service nothing uses", function()
      local amb = tmp(AMB)
      local native = tmp("ambassador: [" .. amb .. "]\nendpoints:\n  greeter:50051: [nope]\n  other: [1.2.3.4:5]\n"
        .. "outlier_detection: {consecutive_failures: -1}\n")
      local model, errs = config.load { config = native }
      assert.is_nil(model)
      assert.same({
        native .. ":3: endpoints.greeter:50051: [1]: not host:port: the string \"nope\"",
        native .. ":5: outlier_detection.consecutive_failures: must be an integer between 0 and 1000, not number -1",
      }, errs)
      native = tmp("ambassador: [" .. amb .. "]\nendpoints:\n  other: [1.2.3.4:5]\n")
      local _, errs2, warns = config.load { config = native }
      assert.same({}, errs2)
      assert.same({ native .. ":3: endpoints: other: no Mapping uses this service" }, warns)
    end)
  end)
end)
