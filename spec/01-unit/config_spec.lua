-- nuncio.config: native config + Ambassador resources -> model (docs/internals.md §2)
local config = require("nuncio.config")
local fixtures = require("ambassador_fixtures")

local FIX = "spec/fixtures/ambassador/"
local NATIVE = FIX .. "native/"

local NO_LISTENER = "no Listener resource: Emissary itself would listen nowhere; nuncio defaults to "
  .. "0.0.0.0:8080 (protocol HTTP, securityModel XFP) like Ambassador's quick-start"

-- model.routes also holds Emissary's internal Mappings (internal = true: check_ready,
-- check_alive, /ambassador/v0/, routed to the admin listener); the user's Mappings,
-- in route order, without them
local function user_routes(model)
  local out = {}
  for _, r in ipairs(model.routes) do
    if not r.internal then
      out[#out + 1] = r
    end
  end
  return out
end

-- the internal Mappings, in route order, as "name prefix -> cluster name @ source"
local function internal_routes(model)
  local out = {}
  for _, r in ipairs(model.routes) do
    if r.internal then
      out[#out + 1] = string.format("%s %s -> %s @ %s", r.name, r.prefix, model.clusters[r.cluster].name, r.source)
    end
  end
  return out
end

-- what internal_routes gives for Emissary's defaults, the admin listener's cluster named admin_cluster
local function default_internal(admin_cluster)
  return {
    "internal_readiness_probe_mapping /ambassador/v0/check_ready -> " .. admin_cluster .. " @ (internal)",
    "internal_liveness_probe_mapping /ambassador/v0/check_alive -> " .. admin_cluster .. " @ (internal)",
    "internal_diagnostics_probe_mapping /ambassador/v0/ -> " .. admin_cluster .. " @ (internal)",
  }
end

-- one internal Mapping exactly as the model holds it (Emissary: hostname "*", timeout_ms 10000,
-- rewrite = prefix so the path reaches the admin listener as sent)
local function internal_route(name, path, cluster)
  return {
    name = "internal_" .. name .. "_probe_mapping", namespace = "default", source = "(internal)", internal = true,
    prefix = path, prefix_regex = false, prefix_exact = false, case_sensitive = true, rewrite = path,
    host = { kind = "glob", value = "*" }, method_regex = false, headers = {}, query = {}, precedence = 0,
    grpc = false, cluster = cluster, timeout_ms = 10000, hosts = { 1 }, policy = 1,
  }
end

describe("nuncio.config", function()
  local tmp = fixtures.temp_files()
  after_each(tmp.clean)

  it("fills every default without a config file", function()
    local model, errs, warns = config.load {}
    assert.same({}, errs)
    assert.same({ NO_LISTENER }, warns)
    assert.same({
      workers = 0, -- auto
      drain_timeout_ms = 30000,
      log_level = "info",
      request_headers_timeout_ms = 10000,
      max_connections = 100000,
      tls_handshake_timeout_ms = 10000,
      io_batch_us = 50,
      admin = { address = "127.0.0.1", port = 8877 },
      lua_path = {},
      chain = {},
      listeners = { { name = "default-listener", address = "0.0.0.0", port = 8080, protocol = "HTTP", tls = false,
        security_model = "XFP", l7_depth = 0, source = "(default)" } },
      hosts = { { name = "default-host", namespace = "default", hostname = "*", insecure_action = "Route",
        source = "(default)" } },
      -- the admin listener's, for the internal Mappings (HTTP/1.1, plain)
      clusters = { { name = "127_0_0_1_8877", host = "127.0.0.1", port = 8877, http2 = false, tls = false,
        connect_timeout_ms = 3000, lb = { policy = "round_robin" } } },
      policies = { { retry_on = {}, num_retries = 0, per_try_timeout_ms = 0, retriable_status_codes = {} } },
      outlier_detection = { consecutive_failures = 5, base_ejection_time_ms = 30000, max_ejection_percent = 10 },
      routes = {
        internal_route("readiness", "/ambassador/v0/check_ready", 1),
        internal_route("liveness", "/ambassador/v0/check_alive", 1),
        internal_route("diagnostics", "/ambassador/v0/", 1),
      },
      module = {},
      http = { strip_matching_host_port = false, merge_slashes = false,
        reject_requests_with_escaped_slashes = false, preserve_external_request_id = false,
        server_name = "envoy", listener_idle_timeout_ms = 3600000, enable_http10 = false,
        enable_grpc_web = false, enable_grpc_http11_bridge = false },
      tls_contexts = {},
      resources = {},
      diagnostics = { enabled = true, allow_non_local = false },
      watch = { ambassador = {} }, -- no config file, no secrets folder
    }, model)
  end)

  it("loads the shipped conf/nuncio.yaml and its greeter example cleanly", function()
    local model, errs, warns = config.load { config = "conf/nuncio.yaml" }
    assert.same({}, errs)
    assert.same({}, warns)
    assert.equal(0, model.workers) -- workers: auto
    assert.equal(30000, model.drain_timeout_ms)
    assert.equal("info", model.log_level)
    assert.same({ address = "127.0.0.1", port = 8877 }, model.admin)
    assert.same({}, model.chain)
    local routes = user_routes(model)
    assert.equal(1, #routes)
    assert.equal("grpc-py", routes[1].name)
    -- relative to conf/, normalized
    local file = "examples/grpc-greeter/ambassador.yaml"
    assert.equal(file .. ":7", routes[1].source)
    assert.equal("127_0_0_1_50051", model.clusters[routes[1].cluster].name)
    assert.equal(8080, model.listeners[1].port)
    assert.same(default_internal("127_0_0_1_8877"), internal_routes(model))
    assert.same({
      { kind = "Mapping", name = "grpc-py", namespace = "default", source = file .. ":7",
        api_version = "getambassador.io/v3alpha1", ok = true },
      { kind = "Host", name = "example-host", namespace = "default", source = file .. ":20",
        api_version = "getambassador.io/v3alpha1", ok = true },
      { kind = "Listener", name = "example-listener", namespace = "default", source = file .. ":31",
        api_version = "getambassador.io/v3alpha1", ok = true },
    }, model.resources)
    assert.same({ enabled = true, allow_non_local = false }, model.diagnostics)
    assert.same({ config = "conf/nuncio.yaml", ambassador = { file } }, model.watch)
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
    for i, r in ipairs(user_routes(model)) do
      names[i] = r.name .. "@" .. r.source
    end
    assert.same({ "folder-b@" .. FIX .. "folder/b.yaml:1", "folder-a@" .. FIX .. "folder/a.yml:1" }, names)
    assert.equal("folder-host", model.hosts[1].name)
    -- admin on 0.0.0.0:9901: the internal Mappings reach it on loopback
    assert.same(default_internal("127_0_0_1_9901"), internal_routes(model))
    assert.equal(30000, model.drain_timeout_ms) -- not in the file: the default
    assert.same({ config = NATIVE .. "nuncio.yaml", ambassador = { FIX .. "folder" } }, model.watch)
  end)

  it("adds command-line Ambassador paths after the config's own", function()
    local model, errs = config.load { config = NATIVE .. "nuncio.yaml",
      ambassador = { "examples/grpc-greeter/ambassador.yaml" } }
    assert.same({}, errs)
    assert.equal(3, #user_routes(model))
    assert.equal(3, #internal_routes(model))
    assert.equal("example-listener", model.listeners[1].name)
    assert.same({ "folder-host", "example-host" }, { model.hosts[1].name, model.hosts[2].name })
    assert.same({ config = NATIVE .. "nuncio.yaml",
      ambassador = { FIX .. "folder", "examples/grpc-greeter/ambassador.yaml" } }, model.watch)
  end)

  it("takes Ambassador paths alone", function()
    local model, errs, warns = config.load { ambassador = { "examples/grpc-greeter/ambassador.yaml" } }
    assert.same({}, errs)
    assert.same({}, warns)
    local routes = user_routes(model)
    assert.equal(1, #routes)
    assert.equal("grpc-py", routes[1].name)
    assert.equal(0, model.workers) -- the default: auto
    assert.same(default_internal("127_0_0_1_8877"), internal_routes(model))
    assert.same({ ambassador = { "examples/grpc-greeter/ambassador.yaml" } }, model.watch)
  end)

  it("turns the admin listener off with admin: false", function()
    local model, errs = config.load { config = NATIVE .. "no-admin.yaml" }
    assert.same({}, errs)
    assert.is_false(model.admin)
    -- nothing to route Emissary's internal Mappings to: none, and no admin cluster
    assert.same({}, model.routes)
    assert.same({}, model.clusters)
  end)

  it("reports every bad key with file and line, and warns on unknown keys", function()
    local model, errs, warns = config.load { config = NATIVE .. "bad.yaml" }
    assert.is_nil(model)
    local f = NATIVE .. "bad.yaml"
    assert.same({
      f .. ":1: workers: must be auto or an integer from 1 to 64, not number 0",
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

  it("takes workers: auto (stored as 0) or an integer from 1 to 64", function()
    for _, case in ipairs {
      { "auto", 0 }, { '"auto"', 0 }, { "1", 1 }, { "8", 8 }, { "64", 64 },
    } do
      local model, errs = config.load { config = tmp("workers: " .. case[1] .. "\n") }
      assert.same({}, errs)
      assert.equal(case[2], model.workers)
    end
    for _, case in ipairs {
      { "0", "number 0" }, { "65", "number 65" }, { "-1", "number -1" }, { "2.5", "number 2.5" },
      { "two", 'the string "two"' }, { "Auto", 'the string "Auto"' },
    } do
      local p = tmp("workers: " .. case[1] .. "\n")
      local model, errs = config.load { config = p }
      assert.is_nil(model)
      assert.same({ p .. ":1: workers: must be auto or an integer from 1 to 64, not " .. case[2] }, errs)
    end
  end)

  it("reads drain_timeout_ms, an integer >= 0, default 30000", function()
    local model, errs, warns = config.load { config = tmp("drain_timeout_ms: 5000\n") }
    assert.same({}, errs)
    assert.same({ NO_LISTENER }, warns) -- a known key: no unknown-key warning
    assert.equal(5000, model.drain_timeout_ms)
    model, errs = config.load { config = tmp("drain_timeout_ms: 0\n") }
    assert.same({}, errs)
    assert.equal(0, model.drain_timeout_ms) -- no grace: exit at once
    model, errs = config.load { config = tmp("workers: 2\n") }
    assert.same({}, errs)
    assert.equal(30000, model.drain_timeout_ms)
    for _, case in ipairs {
      { "-1", "number -1" }, { "1.5", "number 1.5" }, { "soon", 'the string "soon"' },
    } do
      local p = tmp("log_level: warn\ndrain_timeout_ms: " .. case[1] .. "\n")
      model, errs = config.load { config = p }
      assert.is_nil(model)
      assert.same({ p .. ":2: drain_timeout_ms: must be an integer >= 0 (milliseconds), not " .. case[2] }, errs)
    end
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
    assert.equal(0, model.workers) -- auto
    assert.equal(30000, model.drain_timeout_ms)
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
    assert.same({}, user_routes(model))
    assert.same({ { kind = "Mapping", name = "blue-only", namespace = "default", source = p .. ":1",
      api_version = "getambassador.io/v3alpha1", ok = false, ignored = "ambassador_id" } }, model.resources)
    -- the internal Mappings carry no ambassador_id: every instance has them
    assert.same(default_internal("127_0_0_1_8877"), internal_routes(model))
    model = config.load { ambassador = { p }, ambassador_id = "blue" }
    local routes = user_routes(model)
    assert.equal(1, #routes)
    assert.equal("blue-only", routes[1].name)
    assert.is_true(model.resources[1].ok)
  end)
end)
