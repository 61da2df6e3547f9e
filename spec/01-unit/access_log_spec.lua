-- Module envoy_log_type / envoy_log_format / envoy_log_path and the native
-- config's access_log key -> model.http.access_log (nuncio.ambassador.access_log)
local access_log = require("nuncio.ambassador.access_log")
local config = require("nuncio.config")
local fixtures = require("ambassador_fixtures")

local module, ok, errors_of = fixtures.module, fixtures.ok, fixtures.errors_of

local function log_of(lines)
  local model, warns = ok(module(lines))
  return model.http.access_log, warns
end

local function keys(json)
  local out = {}
  for i, f in ipairs(json) do
    out[i] = f.key
  end
  return out
end

describe("access log", function()
  describe("Module", function()
    it("says nothing when the Module says nothing: the core's defaults apply", function()
      assert.is_nil(log_of({ "server_name: x" }))
      assert.same({ enabled = true, type = "text", path = "/dev/stdout" }, access_log.default())
    end)

    it("leaves the format to the core's default (Envoy's) when only the path is given", function()
      assert.same({ enabled = true, type = "text", path = "/tmp/a.log" }, log_of({ "envoy_log_path: /tmp/a.log" }))
      assert.same({ enabled = true, type = "text", path = "/dev/stdout" }, log_of({ "envoy_log_type: text" }))
      -- Emissary's own default differs from Envoy's by an "ACCESS " prefix
      assert.matches('^ACCESS %[%%START_TIME%%%] "%%REQ%(:METHOD%)%%', access_log.EMISSARY_TEXT_FORMAT)
      assert.is_nil((access_log.check_format(access_log.EMISSARY_TEXT_FORMAT)))
    end)

    it("takes a text format and a path, and ends the format with a newline", function()
      local al = log_of({ 'envoy_log_format: "%START_TIME% %REQ(:PATH)% %RESPONSE_CODE%"',
        "envoy_log_path: /var/log/nuncio/access.log" })
      assert.same({ enabled = true, type = "text", path = "/var/log/nuncio/access.log",
        format = "%START_TIME% %REQ(:PATH)% %RESPONSE_CODE%\n" }, al)
      al = log_of({ "envoy_log_type: text", 'envoy_log_format: "100%% %PROTOCOL%\\n"' })
      assert.equal("100%% %PROTOCOL%\n", al.format)
    end)

    it("keeps /dev/fd/1 as written", function()
      assert.equal("/dev/fd/1", log_of({ "envoy_log_path: /dev/fd/1" }).path)
    end)

    it("gives json Emissary's default keys, in Emissary's order", function()
      local al = log_of({ "envoy_log_type: json" })
      assert.equal("json", al.type)
      assert.is_nil(al.format)
      assert.same({ "start_time", "method", "path", "protocol", "response_code", "response_flags", "bytes_received",
        "bytes_sent", "duration", "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
        "upstream_host", "upstream_cluster", "upstream_local_address", "downstream_local_address",
        "downstream_remote_address", "requested_server_name", "istio_policy_status",
        "upstream_transport_failure_reason" }, keys(al.json))
      assert.same({ key = "path", fmt = "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" }, al.json[3])
      -- the defaults are a copy: a second load is not affected by changes to the first
      al.json[1].key = "changed"
      assert.equal("start_time", log_of({ "envoy_log_type: json" }).json[1].key)
    end)

    it("keeps the JSON keys in the order the YAML lists them", function()
      local al = log_of({ "envoy_log_type: json", "envoy_log_format:", '  zeta: "%PROTOCOL%"',
        '  alpha: "%DURATION%"', '  mid: "took %DURATION% ms"', '  "with space": "%REQ(USER-AGENT):10%"' })
      assert.same({ { key = "zeta", fmt = "%PROTOCOL%" }, { key = "alpha", fmt = "%DURATION%" },
        { key = "mid", fmt = "took %DURATION% ms" }, { key = "with space", fmt = "%REQ(USER-AGENT):10%" } }, al.json)
    end)

    it("reads typed_json as json (Envoy renders both typed)", function()
      local al = log_of({ "envoy_log_type: typed_json", "envoy_log_format: {protocol: '%PROTOCOL%'}" })
      assert.equal("json", al.type)
      assert.same({ { key = "protocol", fmt = "%PROTOCOL%" } }, al.json)
      assert.equal("json", log_of({ "envoy_log_type: JSON" }).type)
    end)

    it("refuses an unknown type with the line", function()
      local errs = errors_of(module({ "server_name: x", "envoy_log_type: xml" }))
      assert.equal(1, #errs)
      assert.matches('t.yaml:9: Module ambassador: config.envoy_log_type: must be text or json, not the string "xml"',
        errs[1], 1, true)
    end)

    it("refuses an unknown operator with the line, naming it", function()
      local errs = errors_of(module({ "server_name: x", 'envoy_log_format: "[%START_TIME%] %REQ(:METHOD)% %BOGUS%"' }))
      assert.equal(1, #errs)
      assert.matches("t.yaml:9: Module ambassador: config.envoy_log_format: unknown command operator %BOGUS%",
        errs[1], 1, true)
    end)

    it("refuses an unknown operator in a JSON value at that key's line", function()
      local errs = errors_of(module({ "envoy_log_type: json", "envoy_log_format:", '  ok: "%PROTOCOL%"',
        '  bad: "%NOPE(x)%"' }))
      assert.equal(1, #errs)
      assert.matches("t.yaml:11: Module ambassador: config.envoy_log_format.bad: unknown command operator %NOPE%",
        errs[1], 1, true)
    end)

    it("refuses malformed operators the way the core would", function()
      local cases = {
        ["%REQ(:METHOD)"] = "%REQ: missing the closing '%'",
        ["%REQ%"] = "%REQ%: needs an argument",
        ["%PROTOCOL(x)%"] = "%PROTOCOL%: takes no argument",
        ["%DURATION:3%"] = "%DURATION%: takes no :length",
        ["%REQ(A?B?C)%"] = "%REQ(A?B?C)%: expected HEADER or HEADER?ALTERNATIVE",
        ["%GRPC_STATUS(LOUD)%"] = "%GRPC_STATUS(LOUD)%: expected CAMEL_STRING, SNAKE_STRING or NUMBER",
        ["50% off"] = "'%' that starts no command operator (write %% for a literal %)",
        ["%REQ(X):%"] = "%REQ: ':' must be followed by a length",
        ["%START_TIME(%s"] = "%START_TIME(: missing ')'",
      }
      for fmt, want in pairs(cases) do
        assert.equal(want, (access_log.check_format(fmt)))
      end
      for _, good in ipairs({ "%START_TIME(%Y-%m-%dT%H:%M:%S.%3f)%", "%REQ(X-A?X-B):12%", "%%", "plain",
        "%GRPC_STATUS(NUMBER)% %GRPC_STATUS_NUMBER%", "%REQ_WITHOUT_QUERY(:PATH)%", "%TRAILER(grpc-message):40%" }) do
        assert.is_nil((access_log.check_format(good)))
      end
    end)

    it("refuses a mapping for text, a string for json, and nested JSON", function()
      local errs = errors_of(module({ "envoy_log_format: {a: '%PROTOCOL%'}" }))
      assert.matches("config.envoy_log_format: must be a string of command operators (envoy_log_type text), not a mapping",
        errs[1], 1, true)
      errs = errors_of(module({ "envoy_log_type: json", "envoy_log_format: '%PROTOCOL%'" }))
      assert.matches('config.envoy_log_format: must be a mapping of key: "%OPERATOR%" (envoy_log_type json)', errs[1], 1,
        true)
      errs = errors_of(module({ "envoy_log_type: json", "envoy_log_format:", "  a: {b: '%PROTOCOL%'}" }))
      assert.matches("t.yaml:10: Module ambassador: config.envoy_log_format.a: nested JSON formats are not supported",
        errs[1], 1, true)
    end)

    it("warns about operators nuncio has no data for", function()
      local _, warns = log_of({ 'envoy_log_format: "%DYNAMIC_METADATA(ns:key)%"' })
      assert.is_true(fixtures.contains(warns, "t.yaml:8: Module ambassador: config.envoy_log_format: "
        .. "%DYNAMIC_METADATA%: nuncio has no such data; always logged as -"))
    end)
  end)

  describe("native access_log key", function()
    local files = fixtures.temp_files()
    after_each(files.clean)

    local function load(native, module_lines)
      local amb = files(module(module_lines or { "server_name: x" }) .. fixtures.LISTENER)
      local cfg = files(native .. "\nambassador: " .. amb .. "\n")
      return config.load({ config = cfg })
    end

    it("is absent: the Module's log, or none in the model (the core's defaults)", function()
      local model, errs = load("workers: 1", { "envoy_log_path: /tmp/x.log" })
      assert.same({}, errs)
      assert.equal("/tmp/x.log", model.http.access_log.path)
      local amb = files(fixtures.LISTENER)
      model, errs = config.load({ config = files("ambassador: " .. amb .. "\n") })
      assert.same({}, errs)
      assert.is_nil(model.http.access_log)
    end)

    it("applies without a Module log too", function()
      local model, errs = load("access_log: {path: /tmp/n.log}")
      assert.same({}, errs)
      assert.same({ enabled = true, type = "text", path = "/tmp/n.log" }, model.http.access_log)
    end)

    it("false turns the log off", function()
      local model, errs = load("access_log: false", { "envoy_log_type: json" })
      assert.same({}, errs)
      assert.is_false(model.http.access_log.enabled)
    end)

    it("a path alone keeps the Module's format", function()
      local model, errs = load("access_log: {path: /tmp/native.log}", { "envoy_log_type: json" })
      assert.same({}, errs)
      local al = model.http.access_log
      assert.equal("/tmp/native.log", al.path)
      assert.equal("json", al.type)
      assert.equal("start_time", al.json[1].key)
    end)

    it("a format replaces the Module's; a mapping means json", function()
      local model, errs = load("access_log:\n  format: '%PROTOCOL% %DURATION%'", { "envoy_log_type: json" })
      assert.same({}, errs)
      assert.same({ enabled = true, type = "text", path = "/dev/stdout", format = "%PROTOCOL% %DURATION%\n" },
        model.http.access_log)
      model, errs = load("access_log:\n  format:\n    b: '%PROTOCOL%'\n    a: '%DURATION%'")
      assert.same({}, errs)
      assert.same({ { key = "b", fmt = "%PROTOCOL%" }, { key = "a", fmt = "%DURATION%" } }, model.http.access_log.json)
      model, errs = load("access_log:\n  json:\n    z: '%RESPONSE_CODE%'")
      assert.same({}, errs)
      assert.equal("json", model.http.access_log.type)
      assert.same({ { key = "z", fmt = "%RESPONSE_CODE%" } }, model.http.access_log.json)
    end)

    it("refuses bad values with the native file's line", function()
      local model, errs = load("workers: 1\naccess_log:\n  type: csv\n  format: '%NOPE%'")
      assert.is_nil(model)
      assert.equal(2, #errs)
      assert.matches(":3: access_log.type: must be text or json", errs[1], 1, true)
      assert.matches(":4: access_log.format: unknown command operator %NOPE%", errs[2], 1, true)
      model, errs = load("access_log: 3")
      assert.is_nil(model)
      assert.matches(":1: access_log: must be false or a mapping", errs[1], 1, true)
      model, errs = load("access_log:\n  json:\n    k: '%BAD%'")
      assert.is_nil(model)
      assert.matches(":3: access_log.json.k: unknown command operator %BAD%", errs[1], 1, true)
    end)
  end)
end)
