-- Request and connection limits in the model (issue 9): the Module's max_request_headers_kb,
-- buffer.max_request_bytes and buffer_limit_bytes (reference/ambassador-behaviour.md §5.2), the
-- Listener's http2MaxConcurrentStreams (a nuncio extension), and the native config's
-- max_connections and tls_handshake_timeout_ms.
local config = require("nuncio.config")
local fixtures = require("ambassador_fixtures")
local load, doc, module, ok, errors_of = fixtures.load, fixtures.doc, fixtures.module, fixtures.ok,
  fixtures.errors_of

local function mapping(name)
  return doc("Mapping", name, { 'hostname: "*"', "prefix: /" .. name .. "/", "service: up" })
end

-- a Listener with extra spec lines (its first spec line is line 7 of its document)
local function listener(extra)
  local body = { "port: 8080", "protocol: HTTP", "securityModel: XFP", "hostBinding: {namespace: {from: ALL}}" }
  for _, l in ipairs(extra or {}) do
    body[#body + 1] = l
  end
  return doc("Listener", "l", body)
end

describe("limits", function()
  describe("Module max_request_headers_kb", function()
    it("is absent from the model by default (the core's 60 KiB, Envoy's default)", function()
      local model = ok(mapping("a"))
      assert.is_nil(model.http.max_request_headers_kb)
    end)

    it("is read into model.http without a 'not implemented' warning", function()
      local model, warns = ok(module({ "max_request_headers_kb: 8" }) .. mapping("a"))
      assert.equal(8, model.http.max_request_headers_kb)
      assert.same({}, warns)
      model = ok(module({ "max_request_headers_kb: 8192" }) .. mapping("a"))
      assert.equal(8192, model.http.max_request_headers_kb)
    end)

    it("refuses 0, more than Envoy's 8192 and non-integers, naming file, line and field", function()
      assert.same({ "t.yaml:8: Module ambassador: config.max_request_headers_kb: must be between 1 and 8192, not 0" },
        errors_of(module({ "max_request_headers_kb: 0" }) .. mapping("a")))
      assert.same({ "t.yaml:8: Module ambassador: config.max_request_headers_kb: must be between 1 and 8192, "
        .. "not 8193" }, errors_of(module({ "max_request_headers_kb: 8193" }) .. mapping("a")))
      assert.same({ 't.yaml:8: Module ambassador: config.max_request_headers_kb: must be an integer, not the '
        .. 'string "60k"' }, errors_of(module({ 'max_request_headers_kb: "60k"' }) .. mapping("a")))
    end)
  end)

  describe("Module buffer", function()
    it("is off by default: no max_request_bytes in the model", function()
      local model = ok(mapping("a"))
      assert.is_nil(model.http.max_request_bytes)
    end)

    it("buffer.max_request_bytes becomes http.max_request_bytes without a warning", function()
      local model, warns = ok(module({ "buffer:", "  max_request_bytes: 4096" }) .. mapping("a"))
      assert.equal(4096, model.http.max_request_bytes)
      assert.same({}, warns)
    end)

    it("requires max_request_bytes when buffer is present, as Emissary does", function()
      assert.same({ "t.yaml:8: Module ambassador: config.buffer.max_request_bytes: required when buffer is set" },
        errors_of(module({ "buffer: {}" }) .. mapping("a")))
    end)

    it("refuses a max_request_bytes that is not a positive integer, on its own line", function()
      assert.same({ "t.yaml:9: Module ambassador: config.buffer.max_request_bytes: must be between 1 and "
        .. "2147483647, not 0" }, errors_of(module({ "buffer:", "  max_request_bytes: 0" }) .. mapping("a")))
      assert.same({ 't.yaml:9: Module ambassador: config.buffer.max_request_bytes: must be an integer, not the '
        .. 'string "1Mi"' }, errors_of(module({ "buffer:", '  max_request_bytes: "1Mi"' }) .. mapping("a")))
    end)

    it("refuses a buffer that is not a mapping", function()
      assert.same({ "t.yaml:8: Module ambassador: config.buffer: must be a mapping, not number 5" },
        errors_of(module({ "buffer: 5" }) .. mapping("a")))
    end)

    it("warns about unknown keys under buffer", function()
      local model, warns = ok(module({ "buffer:", "  max_request_bytes: 10", "  max_request_time: 5" })
        .. mapping("a"))
      assert.equal(10, model.http.max_request_bytes)
      assert.same({ "t.yaml:10: Module ambassador: config.buffer.max_request_time: unknown field, ignored" }, warns)
    end)
  end)

  describe("Module buffer_limit_bytes", function()
    it("is absent by default (the core's 1 MiB, Envoy's per_connection_buffer_limit_bytes)", function()
      assert.is_nil(ok(mapping("a")).http.buffer_limit_bytes)
    end)

    it("is read into model.http without a warning", function()
      local model, warns = ok(module({ "buffer_limit_bytes: 65536" }) .. mapping("a"))
      assert.equal(65536, model.http.buffer_limit_bytes)
      assert.same({}, warns)
    end)

    it("refuses 0 and negative values", function()
      assert.same({ "t.yaml:8: Module ambassador: config.buffer_limit_bytes: must be between 1 and 2147483647, "
        .. "not 0" }, errors_of(module({ "buffer_limit_bytes: 0" }) .. mapping("a")))
      assert.same({ "t.yaml:8: Module ambassador: config.buffer_limit_bytes: must be between 1 and 2147483647, "
        .. "not -1" }, errors_of(module({ "buffer_limit_bytes: -1" }) .. mapping("a")))
    end)
  end)

  describe("Listener http2MaxConcurrentStreams (a nuncio extension)", function()
    it("is absent from the model listener by default (the core's 1000)", function()
      local model, errs = load(mapping("a") .. listener())
      assert.same({}, errs)
      assert.is_nil(model.listeners[1].http2_max_concurrent_streams)
    end)

    it("becomes the listener's http2_max_concurrent_streams without a warning", function()
      local model, errs, warns = load(mapping("a") .. listener({ "http2MaxConcurrentStreams: 7" }))
      assert.same({}, errs)
      assert.same({}, warns)
      assert.equal(7, model.listeners[1].http2_max_concurrent_streams)
    end)

    it("refuses 0 and non-integers with the Listener's file and line", function()
      -- mapping: 9 lines; the Listener's spec starts on line 16, its 5th line is 20
      local model, errs = load(mapping("a") .. listener({ "http2MaxConcurrentStreams: 0" }))
      assert.is_nil(model)
      assert.same({ "t.yaml:20: Listener l: http2MaxConcurrentStreams: must be between 1 and 2147483647, not 0" },
        errs)
      model, errs = load(mapping("a") .. listener({ "http2MaxConcurrentStreams: many" }))
      assert.is_nil(model)
      assert.same({ 't.yaml:20: Listener l: http2MaxConcurrentStreams: must be an integer, not the string "many"' },
        errs)
    end)
  end)

  describe("native max_connections and tls_handshake_timeout_ms", function()
    local native = fixtures.temp_files()
    after_each(native.clean)

    it("default to 100000 connections and 10 s", function()
      local model = config.load {}
      assert.equal(100000, model.max_connections)
      assert.equal(10000, model.tls_handshake_timeout_ms)
    end)

    it("are read from the native config, 0 connections meaning no limit", function()
      local path = native("max_connections: 2\ntls_handshake_timeout_ms: 500\n")
      local model, errs, warns = config.load { config = path }
      assert.same({}, errs)
      assert.equal(2, model.max_connections)
      assert.equal(500, model.tls_handshake_timeout_ms)
      for _, w in ipairs(warns) do
        assert.is_nil(w:find("unknown key", 1, true), w)
      end
      path = native("max_connections: 0\n")
      model = config.load { config = path }
      assert.equal(0, model.max_connections)
    end)

    it("refuse bad values with file and line", function()
      local path = native("workers: 1\nmax_connections: -1\ntls_handshake_timeout_ms: 0\n")
      local model, errs = config.load { config = path }
      assert.is_nil(model)
      assert.same({
        path .. ":2: max_connections: must be an integer between 0 and 2147483647 (0: no limit), not number -1",
        path .. ":3: tls_handshake_timeout_ms: must be an integer between 1 and 2147483647, not number 0",
      }, errs)
      path = native('max_connections: "lots"\n')
      model, errs = config.load { config = path }
      assert.is_nil(model)
      assert.same({ path .. ':1: max_connections: must be an integer between 0 and 2147483647 (0: no limit), not '
        .. 'the string "lots"' }, errs)
    end)
  end)

  describe("native io_batch_us", function()
    local native = fixtures.temp_files()
    after_each(native.clean)

    it("defaults to 50 µs, is read from the native config, 0 turning it off", function()
      assert.equal(50, config.load {}.io_batch_us)
      for _, v in ipairs { 0, 200, 1000 } do
        local model, errs, warns = config.load { config = native("io_batch_us: " .. v .. "\n") }
        assert.same({}, errs)
        assert.equal(v, model.io_batch_us)
        for _, w in ipairs(warns) do
          assert.is_nil(w:find("unknown key", 1, true), w)
        end
      end
    end)

    it("refuses values outside 0..1000 with file and line", function()
      for _, v in ipairs { "-1", "1001", "0.5", '"fast"' } do
        local path = native("workers: 1\nio_batch_us: " .. v .. "\n")
        local model, errs = config.load { config = path }
        assert.is_nil(model)
        assert.equal(1, #errs)
        assert.truthy(errs[1]:find(path .. ":2: io_batch_us: must be an integer from 0 to 1000 (microseconds; 0: off), not ",
          1, true), errs[1])
      end
    end)
  end)
end)
