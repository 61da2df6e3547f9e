-- nuncio.config: native config + Ambassador resources -> model (docs/internals.md §2)
local config = require("nuncio.config")
local fixtures = require("ambassador_fixtures")

local FIX = "spec/fixtures/ambassador/"
local NATIVE = FIX .. "native/"

local NO_LISTENER = "no Listener resource: Emissary itself would listen nowhere; nuncio defaults to "
  .. "0.0.0.0:8080 (protocol HTTP, securityModel XFP) like Ambassador's quick-start"

describe("nuncio.config", function()
  local tmp = fixtures.temp_files()
  after_each(tmp.clean)

  it("fills every default without a config file", function()
    local model, errs, warns = config.load {}
    assert.same({}, errs)
    assert.same({ NO_LISTENER }, warns)
    assert.same({
      workers = 1,
      log_level = "info",
      request_headers_timeout_ms = 10000,
      admin = { address = "127.0.0.1", port = 8877 },
      lua_path = {},
      chain = {},
      listeners = { { name = "default-listener", address = "0.0.0.0", port = 8080, protocol = "HTTP", tls = false,
        security_model = "XFP", l7_depth = 0, source = "(default)" } },
      hosts = { { name = "default-host", namespace = "default", hostname = "*", insecure_action = "Route",
        source = "(default)" } },
      clusters = {},
      policies = { { retry_on = {}, num_retries = 0, per_try_timeout_ms = 0, retriable_status_codes = {} } },
      outlier_detection = { consecutive_failures = 5, base_ejection_time_ms = 30000, max_ejection_percent = 10 },
      routes = {},
      module = {},
      http = { strip_matching_host_port = false, merge_slashes = false,
        reject_requests_with_escaped_slashes = false, preserve_external_request_id = false,
        server_name = "envoy", listener_idle_timeout_ms = 3600000, enable_http10 = false,
        enable_grpc_web = false, enable_grpc_http11_bridge = false },
      tls_contexts = {},
    }, model)
  end)

  it("loads the shipped conf/nuncio.yaml and its greeter example cleanly", function()
    local model, errs, warns = config.load { config = "conf/nuncio.yaml" }
    assert.same({}, errs)
    assert.same({}, warns)
    assert.equal(1, model.workers)
    assert.equal("info", model.log_level)
    assert.same({ address = "127.0.0.1", port = 8877 }, model.admin)
    assert.same({}, model.chain)
    assert.equal(1, #model.routes)
    assert.equal("grpc-py", model.routes[1].name)
    -- relative to conf/, normalized
    assert.equal("examples/grpc-greeter/ambassador.yaml:7", model.routes[1].source)
    assert.equal("127_0_0_1_50051", model.clusters[model.routes[1].cluster].name)
    assert.equal(8080, model.listeners[1].port)
  end)

  it("reads every key, with paths relative to the config file's folder", function()
    local model, errs, warns = config.load { config = NATIVE .. "nuncio.yaml" }
    assert.same({}, errs)
    assert.same({ NO_LISTENER }, warns)
    assert.equal(4, model.workers)
    assert.equal("debug", model.log_level)
    assert.same({ address = "0.0.0.0", port = 9901 }, model.admin)
    assert.same({ NATIVE .. "filters", "/opt/nuncio/filters" }, model.lua_path)
    assert.same({
      { name = "auth.basic", config = { realm = "demo" }, source = NATIVE .. "nuncio.yaml:10" },
      { name = "nuncio.filters.noop", config = {}, source = NATIVE .. "nuncio.yaml:13" },
    }, model.chain)
    -- ambassador: [../folder] -> spec/fixtures/ambassador/folder
    local names = {}
    for i, r in ipairs(model.routes) do
      names[i] = r.name .. "@" .. r.source
    end
    assert.same({ "folder-b@" .. FIX .. "folder/b.yaml:1", "folder-a@" .. FIX .. "folder/a.yml:1" }, names)
    assert.equal("folder-host", model.hosts[1].name)
  end)

  it("adds command-line Ambassador paths after the config's own", function()
    local model, errs = config.load { config = NATIVE .. "nuncio.yaml",
      ambassador = { "examples/grpc-greeter/ambassador.yaml" } }
    assert.same({}, errs)
    assert.equal(3, #model.routes)
    assert.equal("example-listener", model.listeners[1].name)
    assert.same({ "folder-host", "example-host" }, { model.hosts[1].name, model.hosts[2].name })
  end)

  it("takes Ambassador paths alone", function()
    local model, errs, warns = config.load { ambassador = { "examples/grpc-greeter/ambassador.yaml" } }
    assert.same({}, errs)
    assert.same({}, warns)
    assert.equal("grpc-py", model.routes[1].name)
    assert.equal(1, model.workers)
  end)

  it("turns the admin listener off with admin: false", function()
    local model, errs = config.load { config = NATIVE .. "no-admin.yaml" }
    assert.same({}, errs)
    assert.is_false(model.admin)
  end)

  it("reports every bad key with file and line, and warns on unknown keys", function()
    local model, errs, warns = config.load { config = NATIVE .. "bad.yaml" }
    assert.is_nil(model)
    local f = NATIVE .. "bad.yaml"
    assert.same({
      f .. ":1: workers: must be an integer >= 1, not number 0",
      f .. ":2: log_level: must be one of debug, info, warn, error, not the string \"loud\"",
      f .. ":4: admin.port: must be an integer between 1 and 65535, not number 0",
      f .. ":6: lua_path: must be a list of strings, not number 3",
      f .. ":8: chain[1].name: required",
      f .. ":9: chain[2]: must be a mapping {name, config}, not number 7",
      f .. ":10: ambassador[1]: must be a string, not number 12",
    }, errs)
    assert.same({
      f .. ":5: admin.colour: unknown key, ignored",
      f .. ":11: speed: unknown key, ignored",
      NO_LISTENER,
    }, warns)
  end)

  it("refuses a config that is not one mapping", function()
    local p = tmp("- a\n- b\n")
    local model, errs = config.load { config = p }
    assert.is_nil(model)
    assert.same({ p .. ":1: the configuration must be a mapping of keys, not a list" }, errs)

    p = tmp("workers: 1\n---\nworkers: 2\n")
    model, errs = config.load { config = p }
    assert.is_nil(model)
    assert.same({ p .. ":3: one YAML document expected, found 2" }, errs)
  end)

  it("treats an empty config file as all defaults", function()
    local model, errs = config.load { config = tmp("# nothing yet\n") }
    assert.same({}, errs)
    assert.equal(1, model.workers)
    assert.same({ address = "127.0.0.1", port = 8877 }, model.admin)
  end)

  it("reports broken YAML and missing files", function()
    local p = tmp("workers: [1\n")
    local model, errs = config.load { config = p }
    assert.is_nil(model)
    assert.equal(1, #errs)
    assert.matches("^" .. p:gsub("%p", "%%%0") .. ":2:1: did not find expected ',' or ']'", errs[1])

    model, errs = config.load { config = NATIVE .. "missing.yaml" }
    assert.is_nil(model)
    assert.same({ NATIVE .. "missing.yaml: No such file or directory" }, errs)
  end)

  it("returns nil and the Ambassador errors when resources are wrong", function()
    local model, errs = config.load { ambassador = { FIX .. "errors.yaml" } }
    assert.is_nil(model)
    assert.equal(11, #errs)
    assert.equal(FIX .. "errors.yaml:3: Mapping no-service: service: required", errs[1])
  end)

  it("passes ambassador_id on to the loader", function()
    local p = tmp("apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: blue-only}\n"
      .. "spec: {hostname: '*', prefix: /b/, service: b, ambassador_id: [blue]}\n")
    local model = config.load { ambassador = { p } }
    assert.same({}, model.routes)
    model = config.load { ambassador = { p }, ambassador_id = "blue" }
    assert.equal("blue-only", model.routes[1].name)
  end)
end)
