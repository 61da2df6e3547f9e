-- Mapping and Module `cors` (behaviour notes §1.12) into route.cors.
local fixtures = require("ambassador_fixtures")
local doc = fixtures.doc
local module, ok, errors_of = fixtures.module, fixtures.ok, fixtures.errors_of

local mapping = fixtures.mapping

local route = fixtures.route

describe("cors", function()
  it("reads a Mapping's cors: lists joined with \", \", max_age a string", function()
    local model, warns = ok(mapping("a", { "cors:", "  origins: [https://x.example, '*']",
      "  methods: [POST, OPTIONS]", "  headers: [content-type, x-grpc-web]",
      "  exposed_headers: [grpc-status, grpc-message]", '  max_age: "86400"', "  credentials: true" }))
    assert.same({}, warns)
    assert.same({ origins = { "https://x.example", "*" }, methods = "POST, OPTIONS",
      headers = "content-type, x-grpc-web", exposed_headers = "grpc-status, grpc-message",
      max_age = "86400", credentials = true }, route(model, "a").cors)
  end)

  it("splits comma strings (v2) and takes an integer max_age", function()
    local model = ok(mapping("a", { "cors:", "  origins: https://a.example, https://b.example",
      "  methods: GET,POST", "  max_age: 600" }))
    assert.same({ origins = { "https://a.example", "https://b.example" }, methods = "GET, POST",
      max_age = "600", credentials = false }, route(model, "a").cors)
  end)

  it("uses the Module's cors for Mappings without one; a Mapping's own wins", function()
    local model = ok(module({ "cors: {origins: [https://m.example]}" }) .. mapping("a") ..
      mapping("b", { "cors: {origins: [https://b.example]}" }))
    assert.same({ "https://m.example" }, route(model, "a").cors.origins)
    assert.same({ "https://b.example" }, route(model, "b").cors.origins)
    assert.is_nil(route(ok(mapping("c")), "c").cors)
  end)

  it("names the field and line of a mistake", function()
    assert.same({ "t.yaml:11: Mapping a: cors.credentials: must be true or false, not the string \"yes\"" },
      errors_of(mapping("a", { "cors:", "  credentials: \"yes\"" })))
    assert.same({ "t.yaml:11: Mapping a: cors.max_age: must be a number of seconds (\"86400\")" },
      errors_of(mapping("a", { "cors:", "  max_age: 1h" })))
    assert.same({ "t.yaml:11: Mapping a: cors.origins[1]: must be a string, not number 5" },
      errors_of(mapping("a", { "cors:", "  origins: [5]" })))
  end)

  it("warns about unknown keys inside cors", function()
    local _, warns = ok(mapping("a", { "cors: {origins: '*', frob: 1}" }))
    assert.same({ "t.yaml:10: Mapping a: cors.frob: unknown field, ignored" }, warns)
  end)
end)
