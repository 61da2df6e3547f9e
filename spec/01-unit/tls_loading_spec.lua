-- How TLS resources load and resolve (issue 3, docs/internals.md §6): Kubernetes
-- Secrets, the secrets folder, TLSContext, Host TLS, default listeners and
-- Mapping origination. Certificates here are PEM-looking text
-- (spec/fixtures/tls/): C parses the real ones later.
local amb = require("nuncio.ambassador")
local tls = require("nuncio.ambassador.tls")
local config = require("nuncio.config")

local FIX = "spec/fixtures/tls/"
local SECRETS = FIX .. "secrets"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local SERVER_CRT, SERVER_KEY = read(FIX .. "server.crt"), read(FIX .. "server.key")
local CLIENT_CRT, CLIENT_KEY = read(FIX .. "client.crt"), read(FIX .. "client.key")
local CA_CRT = read(FIX .. "ca.crt")

local function b64(s)
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for j = 1, 4 do
      local v = math.floor(n / 64 ^ (4 - j)) % 64
      chars[j] = alphabet:sub(v + 1, v + 1)
    end
    if not b then
      chars[3], chars[4] = "=", "="
    elseif not c then
      chars[4] = "="
    end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

-- load_text + build_model, warnings of both steps together
local fixtures = require("ambassador_fixtures")
local load = fixtures.load

-- one v3alpha1 resource; body lines go under spec: (the first body line is line 7)
local doc = fixtures.doc

-- a kubernetes.io/tls Secret with base64 data (lines: "---" 1, apiVersion 2, data keys from 8)
local function secret(name, crt, key, extra)
  local lines = { "---", "apiVersion: v1", "kind: Secret", "metadata:", "  name: " .. name }
  for _, l in ipairs(extra or {}) do
    lines[#lines + 1] = "  " .. l
  end
  lines[#lines + 1] = "type: kubernetes.io/tls"
  lines[#lines + 1] = "data:"
  if crt then
    lines[#lines + 1] = "  tls.crt: " .. b64(crt)
  end
  if key then
    lines[#lines + 1] = "  tls.key: " .. b64(key)
  end
  return table.concat(lines, "\n") .. "\n"
end

local HTTP_LISTENER = doc("Listener", "http", { "port: 8080", "protocol: HTTP", "securityModel: XFP",
  "hostBinding: {namespace: {from: ALL}}" })
local LISTENERS = doc("Listener", "http", { "port: 8080", "protocol: HTTP", "securityModel: XFP",
  "hostBinding: {namespace: {from: ALL}}" })
  .. doc("Listener", "https", { "port: 8443", "protocol: HTTPS", "securityModel: XFP",
    "hostBinding: {namespace: {from: ALL}}" })

local function ok_model(text, opts)
  local model, errs, warns = load(text, opts)
  assert.same({}, errs)
  assert.is_table(model)
  return model, warns
end

local function errors_of(text, opts)
  local model, errs = load(text, opts)
  assert.is_nil(model)
  return errs
end

local contains = fixtures.contains

local function names_of(list)
  local out = {}
  for i, v in ipairs(list) do
    out[i] = v.name
  end
  return out
end

describe("TLS loading", function()
  describe("base64", function()
    it("decodes standard base64 with padding, skipping line breaks", function()
      assert.equal("", tls.base64_decode(""))
      assert.equal("f", tls.base64_decode("Zg=="))
      assert.equal("fo", tls.base64_decode("Zm8="))
      assert.equal("foo", tls.base64_decode("Zm9v"))
      assert.equal("foobar", tls.base64_decode("Zm9v\nYmFy\r\n"))
      assert.equal(SERVER_CRT, tls.base64_decode(b64(SERVER_CRT)))
      local all = {}
      for i = 0, 255 do
        all[#all + 1] = string.char(i)
      end
      all = table.concat(all)
      assert.equal(all, tls.base64_decode(b64(all)))
    end)

    it("refuses bad characters, lengths and padding", function()
      local function err(s)
        return select(2, tls.base64_decode(s))
      end
      assert.equal("not base64: length 3 is not a multiple of 4", err("Zm9"))
      assert.equal('not base64: unexpected "%"', err("Zm9%"))
      assert.equal('not base64: unexpected "-"', err("Zm-v"))
      assert.equal("not base64: unexpected byte 0x20", err("Zm 9"))
      assert.equal("not base64: '=' before the end", err("Zg==Zm9v"))
      assert.equal("not base64: '=' before the end", err("Zg=v"))
    end)
  end)

  describe("Kubernetes Secrets", function()
    local HOST = doc("Host", "h", { "hostname: api.example.com", "tlsSecret: {name: api-cert}" })

    it("resolve a Host's tlsSecret from base64 data", function()
      local model = ok_model(secret("api-cert", SERVER_CRT, SERVER_KEY) .. HOST .. LISTENERS)
      assert.same({ {
        name = "h",
        hostnames = { "api.example.com" },
        cert_chain_pem = SERVER_CRT,
        private_key_pem = SERVER_KEY,
        cert_required = false,
        alpn_protocols = { "h2", "http/1.1" },
        source = "t.yaml:17: Host h: tlsSecret",
      } }, model.tls_contexts)
    end)

    it("read stringData PEM text, which wins over data, and ca.crt", function()
      local text = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: api-cert}\ntype: kubernetes.io/tls\n"
        .. "data:\n  tls.crt: " .. b64("garbage, replaced by stringData") .. "\n  tls.key: " .. b64(SERVER_KEY)
        .. "\nstringData:\n  tls.crt: |\n" .. SERVER_CRT:gsub("[^\n]+", "    %0") .. "  ca.crt: |\n"
        .. CA_CRT:gsub("[^\n]+", "    %0")
      local model = ok_model(text .. HOST .. LISTENERS)
      local ctx = model.tls_contexts[1]
      assert.equal(SERVER_CRT, ctx.cert_chain_pem)
      assert.equal(SERVER_KEY, ctx.private_key_pem)
      assert.equal(CA_CRT, ctx.ca_pem) -- a secret's ca.crt verifies clients, as in Emissary
    end)

    it("resolve by namespace: tlsSecret.namespace, the Host's own, and TLSContext name.namespace", function()
      local text = secret("cert", SERVER_CRT, SERVER_KEY, { "namespace: edge" })
        .. secret("cert", CLIENT_CRT, CLIENT_KEY)
        .. doc("Host", "explicit", { "hostname: a.example.com", "tlsSecret: {name: cert, namespace: edge}" })
        .. doc("Host", "own", { "hostname: b.example.com", "tlsSecret: {name: cert}" }, { "namespace: edge" })
        .. doc("Host", "default", { "hostname: c.example.com", "tlsSecret: {name: cert}" })
        .. doc("TLSContext", "dotted", { "hosts: [d.example.com]", "secret: cert.edge" })
        .. doc("TLSContext", "literal", { "hosts: [e.example.com]", "secret: cert.edge", "secret_namespacing: false" })
      local model, errs = load(text .. LISTENERS)
      assert.is_nil(model)
      -- with namespacing off "cert.edge" is one name, which no Secret has
      assert.same({ "t.yaml:60: TLSContext literal: secret: Secret cert.edge not found in namespace default: "
        .. "no kubernetes.io/tls Secret of that name in the loaded YAML (and no secrets_dir in the native config)" },
        errs)
      model = ok_model(text:gsub("secret: cert.edge\n  secret_namespacing: false", "secret: cert") .. LISTENERS)
      local certs = {}
      for _, c in ipairs(model.tls_contexts) do
        certs[c.name] = c.cert_chain_pem == SERVER_CRT and "edge" or "default"
      end
      assert.same({ explicit = "edge", own = "edge", default = "default", dotted = "edge", literal = "default" }, certs)
    end)

    it("report bad base64 and text that is not PEM with file, line, Secret name and key", function()
      local text = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: broken}\ntype: kubernetes.io/tls\n"
        .. "data:\n  tls.crt: Zm9%\n  tls.key: " .. b64("just some text") .. "\n"
        .. "---\napiVersion: v1\nkind: Secret\nmetadata: {name: plain}\ntype: kubernetes.io/tls\n"
        .. "stringData: {tls.crt: hello, tls.key: world}\n"
        .. "---\napiVersion: v1\nkind: Secret\nmetadata: {name: empty}\ntype: kubernetes.io/tls\ndata: {}\n"
      assert.same({
        't.yaml:7: Secret broken: data.tls.crt: not base64: unexpected "%"',
        "t.yaml:8: Secret broken: data.tls.key: not PEM (no -----BEGIN line)",
        "t.yaml:14: Secret plain: stringData.tls.crt: not PEM (no -----BEGIN line)",
        "t.yaml:14: Secret plain: stringData.tls.key: not PEM (no -----BEGIN line)",
        "t.yaml:16: Secret empty: data: a kubernetes.io/tls Secret needs tls.crt (in data, base64, or in stringData)",
      }, errors_of(text))
    end)

    it("skip Secrets of other types and other Kubernetes objects quietly", function()
      local text = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: token}\ntype: Opaque\n"
        .. "data: {password: '%%%'}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: untyped}\n"
        .. "data: {tls.crt: not-even-base64}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
      local model = ok_model(text .. LISTENERS)
      assert.same({}, model.tls_contexts)
      -- and they do not count as certificates
      assert.same({ "t.yaml:23: Host h: tlsSecret.name: Secret token not found in namespace default: no "
        .. "kubernetes.io/tls Secret of that name in the loaded YAML (and no secrets_dir in the native config)" },
        errors_of(text .. doc("Host", "h", { "hostname: a.example.com", "tlsSecret: {name: token}" })))
    end)

    it("refuse a Secret used as a certificate without its key, and duplicates", function()
      local errs = errors_of(secret("half", SERVER_CRT) .. secret("half", SERVER_CRT, SERVER_KEY)
        .. doc("Host", "h", { "hostname: a.example.com", "tlsSecret: {name: half}" }) .. LISTENERS)
      assert.same({
        "t.yaml:10: Secret half: duplicate Secret name in namespace default (first defined at t.yaml:2)",
        "t.yaml:25: Host h: tlsSecret.name: Secret half has no tls.key: a certificate needs its private key",
      }, errs)
    end)
  end)

  describe("secrets_dir", function()
    local function host(name)
      return doc("Host", "h", { "hostname: a.example.com", "tlsSecret: {name: " .. name .. "}" })
    end

    it("reads NAME/tls.crt + tls.key (+ ca.crt), a mounted secret volume", function()
      local model = ok_model(host("folder-cert") .. LISTENERS, { secrets_dir = SECRETS })
      local ctx = model.tls_contexts[1]
      assert.equal(read(SECRETS .. "/folder-cert/tls.crt"), ctx.cert_chain_pem)
      assert.equal(read(SECRETS .. "/folder-cert/tls.key"), ctx.private_key_pem)
      assert.equal(read(SECRETS .. "/folder-cert/ca.crt"), ctx.ca_pem)
    end)

    it("reads NAME.crt + NAME.key", function()
      local model = ok_model(host("flat-cert") .. LISTENERS, { secrets_dir = SECRETS })
      assert.equal(read(SECRETS .. "/flat-cert.crt"), model.tls_contexts[1].cert_chain_pem)
      assert.equal(read(SECRETS .. "/flat-cert.key"), model.tls_contexts[1].private_key_pem)
    end)

    it("lets a Secret in the YAML win over the folder", function()
      local model = ok_model(secret("flat-cert", CLIENT_CRT, CLIENT_KEY) .. host("flat-cert") .. LISTENERS,
        { secrets_dir = SECRETS })
      assert.equal(CLIENT_CRT, model.tls_contexts[1].cert_chain_pem)
    end)

    it("names what it looked for when the secret is missing, unreadable or not PEM", function()
      assert.same({ "t.yaml:8: Host h: tlsSecret.name: Secret nope not found in namespace default: no "
        .. "kubernetes.io/tls Secret of that name in the loaded YAML, nor " .. SECRETS .. "/nope/tls.crt nor "
        .. SECRETS .. "/nope.crt" }, errors_of(host("nope") .. LISTENERS, { secrets_dir = SECRETS }))
      assert.same({ "t.yaml:8: Host h: tlsSecret.name: " .. SECRETS .. "/garbage.crt is not PEM (no -----BEGIN line)" },
        errors_of(host("garbage") .. LISTENERS, { secrets_dir = SECRETS }))
      assert.same({ "t.yaml:8: Host h: tlsSecret.name: Secret no-key has no tls.key: a certificate needs its private key" },
        errors_of(host("no-key") .. LISTENERS, { secrets_dir = SECRETS }))
    end)

    it("comes from the native config, relative to its folder", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir .. "/conf"))
      local f = assert(io.open(dir .. "/conf/nuncio.yaml", "wb"))
      f:write("secrets_dir: ../secrets\nambassador: [tls.yaml]\n")
      f:close()
      assert(os.execute("cp -r " .. SECRETS .. " " .. dir .. "/secrets"))
      f = assert(io.open(dir .. "/conf/tls.yaml", "wb"))
      f:write(host("flat-cert") .. LISTENERS)
      f:close()
      local model, errs = config.load { config = dir .. "/conf/nuncio.yaml" }
      assert.same({}, errs)
      assert.equal(read(SECRETS .. "/flat-cert.crt"), model.tls_contexts[1].cert_chain_pem)
      assert.is_true(model.listeners[2].tls)
      os.execute("rm -rf " .. dir)
    end)

    it("is optional, and a folder that does not exist is a warning", function()
      local p = os.tmpname()
      local f = assert(io.open(p, "wb"))
      f:write("secrets_dir: /nonexistent/nuncio-secrets\n")
      f:close()
      local model, errs, warns = config.load { config = p }
      os.remove(p)
      assert.same({}, errs)
      assert.is_table(model)
      assert.equal(p .. ":1: secrets_dir: /nonexistent/nuncio-secrets is not a folder: no secret can come from it",
        warns[1])
    end)
  end)

  describe("TLSContext", function()
    it("reads cert_chain_file, private_key_file and cacert_chain_file relative to its file", function()
      local model, errs, warns = amb.load({ FIX .. "tls.yaml" })
      assert.same({}, errs)
      assert.same({
        name = "relative",
        hostnames = { "files.example.com" },
        cert_chain_pem = SERVER_CRT,
        private_key_pem = SERVER_KEY,
        ca_pem = CA_CRT,
        cert_required = true,
        alpn_protocols = { "h2", "http/1.1" },
        source = FIX .. "tls.yaml:9: TLSContext relative: cert_chain_file",
      }, model.tls_contexts[1])
      -- no Host: Emissary would drop the context; nuncio serves it and says so
      assert.is_true(contains(warns, FIX .. "tls.yaml:8: TLSContext relative: hosts: no Host resource: Emissary 2+ "
        .. "ignores TLSContexts that terminate TLS when no Host exists; nuncio serves them, as Ambassador 1.x did"))
      assert.same({ "default-listener", "default-https-listener" }, names_of(model.listeners))
    end)

    it("reports missing files with the exact path and reason", function()
      local errs = errors_of(doc("TLSContext", "c", { "hosts: [a.example.com]", "cert_chain_file: /nope/tls.crt",
        "private_key_file: " .. FIX .. "server.key", "cacert_chain_file: " .. FIX }) .. LISTENERS)
      assert.same({
        "t.yaml:8: TLSContext c: cert_chain_file: cannot read /nope/tls.crt: No such file or directory",
        "t.yaml:10: TLSContext c: cacert_chain_file: cannot read " .. FIX:sub(1, -2) .. ": Is a directory",
      }, errs)
    end)

    it("needs one certificate source, complete, when it terminates", function()
      local errs = errors_of(doc("TLSContext", "both", { "hosts: [a.example.com]", "secret: s",
        "cert_chain_file: " .. FIX .. "server.crt", "private_key_file: " .. FIX .. "server.key" })
        .. doc("TLSContext", "half", { "cert_chain_file: " .. FIX .. "server.crt" })
        .. doc("TLSContext", "none", { "hosts: [b.example.com]" })
        .. doc("TLSContext", "mtls", { "hosts: [c.example.com]", "cert_chain_file: " .. FIX .. "server.crt",
          "private_key_file: " .. FIX .. "server.key", "cert_required: true" }) .. LISTENERS)
      assert.same({
        "t.yaml:8: TLSContext both: secret: set either secret or cert_chain_file (with private_key_file), not both",
        "t.yaml:17: TLSContext half: cert_chain_file: needs private_key_file as well",
        "t.yaml:24: TLSContext none: hosts: terminating TLS for these hosts needs a certificate: set secret, or "
          .. "cert_chain_file and private_key_file (or name this TLSContext in a Host with tlsSecret)",
        "t.yaml:34: TLSContext mtls: cert_required: needs a CA to check client certificates against: set "
          .. "cacert_chain_file or ca_secret",
      }, errs)
    end)

    it("parses alpn_protocols as a comma string or a list", function()
      local function alpn(value)
        local model = ok_model(doc("TLSContext", "c", { "hosts: [a.example.com]", "cert_chain_file: " .. FIX
          .. "server.crt", "private_key_file: " .. FIX .. "server.key", "alpn_protocols: " .. value }) .. LISTENERS)
        return model.tls_contexts[1].alpn_protocols
      end
      assert.same({ "h2" }, alpn("h2"))
      assert.same({ "h2", "http/1.1" }, alpn('"h2,http/1.1"'))
      assert.same({ "h2", "http/1.1" }, alpn('"h2, http/1.1"'))
      assert.same({ "h2", "istio" }, alpn("[h2, istio]"))
      assert.same({ "h2", "http/1.1", "x" }, alpn('["h2,http/1.1", x]'))
      assert.same({ "h2", "http/1.1" }, alpn('""')) -- nothing listed: the default
      assert.same({ 't.yaml:7: TLSContext c: alpn_protocols: must be a string such as "h2,http/1.1" or a list '
        .. "of strings, not number 2" }, errors_of(doc("TLSContext", "c", { "alpn_protocols: 2" })))
    end)

    it("takes v1.0..v1.3 versions and warns about others, as Emissary ignores them", function()
      local model, warns = ok_model(doc("TLSContext", "c", { "hosts: [a.example.com]", "cert_chain_file: " .. FIX
        .. "server.crt", "private_key_file: " .. FIX .. "server.key", "min_tls_version: v1.2",
        "max_tls_version: v1.3", "cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256]", "ecdh_curves: [X25519]" })
        .. doc("TLSContext", "d", { "min_tls_version: TLSv1.2", "max_tls_version: 1.3", "redirect_cleartext_from: 8080" })
        .. LISTENERS)
      assert.equal("v1.2", model.tls_contexts[1].min_tls_version)
      assert.equal("v1.3", model.tls_contexts[1].max_tls_version)
      assert.same({ "ECDHE-RSA-AES128-GCM-SHA256" }, model.tls_contexts[1].cipher_suites)
      assert.same({ "X25519" }, model.tls_contexts[1].ecdh_curves)
      assert.same({
        "t.yaml:7: TLSContext c: hosts: no Host resource: Emissary 2+ ignores TLSContexts that terminate TLS when "
          .. "no Host exists; nuncio serves them, as Ambassador 1.x did",
        't.yaml:20: TLSContext d: min_tls_version: must be v1.0, v1.1, v1.2 or v1.3, not the string "TLSv1.2"; '
          .. "ignored (as Emissary does)",
        "t.yaml:21: TLSContext d: max_tls_version: must be v1.0, v1.1, v1.2 or v1.3, not number 1.3; "
          .. "ignored (as Emissary does)",
        "t.yaml:22: TLSContext d: redirect_cleartext_from: not implemented, ignored: use a Host's "
          .. "requestPolicy.insecure.action",
      }, warns)
      assert.same({ "t.yaml:7: TLSContext c: min_tls_version: v1.3 is above max_tls_version v1.2" },
        errors_of(doc("TLSContext", "c", { "min_tls_version: v1.3", "max_tls_version: v1.2" })))
    end)

    it("resolves secret and ca_secret for termination", function()
      local model = ok_model(secret("srv", SERVER_CRT, SERVER_KEY) .. secret("ca", CA_CRT)
        .. doc("TLSContext", "c", { "hosts: [a.example.com, '*.b.example.com']", "secret: srv", "ca_secret: ca",
          "cert_required: true" }) .. doc("Host", "h", { "hostname: a.example.com", "tlsContext: {name: c}",
          "tlsSecret: {name: srv}" }) .. LISTENERS)
      assert.same({
        name = "c",
        hostnames = { "a.example.com", "*.b.example.com" },
        cert_chain_pem = SERVER_CRT,
        private_key_pem = SERVER_KEY,
        ca_pem = CA_CRT,
        cert_required = true,
        alpn_protocols = { "h2", "http/1.1" },
        source = "t.yaml:25: TLSContext c: secret",
      }, model.tls_contexts[1])
      assert.equal(1, #model.tls_contexts)
    end)
  end)

  describe("Host", function()
    local SECRET = secret("cert", SERVER_CRT, SERVER_KEY)

    it("makes a context of its own from tlsSecret, named after the Host, SNI without the port", function()
      local model, warns = ok_model(SECRET .. doc("Host", "api", { "hostname: api.example.com:8443",
        "tlsSecret: {name: cert}" }) .. LISTENERS)
      assert.same({ "api.example.com" }, model.tls_contexts[1].hostnames)
      assert.equal("api", model.tls_contexts[1].name)
      assert.same({}, warns)
      assert.same({ "http", "https" }, names_of(model.listeners))
      assert.is_false(model.listeners[1].tls)
      assert.is_true(model.listeners[2].tls)
    end)

    it("serves one certificate per Host by SNI and says when two claim a name", function()
      local model, warns = ok_model(SECRET .. secret("other", CLIENT_CRT, CLIENT_KEY)
        .. doc("Host", "a", { "hostname: a.example.com", "tlsSecret: {name: cert}" })
        .. doc("Host", "b", { "hostname: '*.b.example.com'", "tlsSecret: {name: other}" })
        .. doc("Host", "dup", { "hostname: a.example.com", "tlsSecret: {name: other}" })
        .. doc("Host", "odd", { "hostname: 'api.*'", "tlsSecret: {name: other}" }) .. LISTENERS)
      assert.same({ "a", "b", "dup", "odd" }, names_of(model.tls_contexts))
      assert.same({ "*.b.example.com" }, model.tls_contexts[2].hostnames)
      assert.equal(CLIENT_CRT, model.tls_contexts[2].cert_chain_pem)
      assert.same({
        "t.yaml:42: Host dup: tlsSecret: a.example.com is also served by a (t.yaml:26: Host a: tlsSecret): clients "
          .. "sending that SNI get the first one's certificate",
        "t.yaml:49: Host odd: hostname: SNI matches exact names and leading '*.' globs only: clients sending SNI "
          .. "never select this certificate for api.* (it serves them only as the default one)",
      }, warns)
    end)

    it("takes settings from tlsContext, adding its hostname to the context's", function()
      local model, warns = ok_model(SECRET .. doc("TLSContext", "ctx", { "hosts: [h]", "alpn_protocols: h2",
        "min_tls_version: v1.2" }) .. doc("Host", "h", { "hostname: api.example.com", "tlsSecret: {name: cert}",
        "tlsContext: {name: ctx}" }) .. LISTENERS)
      assert.same({}, warns)
      assert.same({ {
        name = "ctx",
        hostnames = { "h", "api.example.com" },
        cert_chain_pem = SERVER_CRT,
        private_key_pem = SERVER_KEY,
        cert_required = false,
        alpn_protocols = { "h2" },
        min_tls_version = "v1.2",
        source = "t.yaml:26: Host h: tlsSecret",
      } }, model.tls_contexts)
    end)

    it("takes an origination-only context as its own, with its hostname", function()
      local model = ok_model(SECRET .. doc("TLSContext", "ctx", { "alpn_protocols: h2" })
        .. doc("Host", "h", { "hostname: api.example.com", "tlsSecret: {name: cert}", "tlsContext: {name: ctx}" })
        .. LISTENERS)
      assert.same({ "api.example.com" }, model.tls_contexts[1].hostnames)
      assert.same({ "h2" }, model.tls_contexts[1].alpn_protocols)
    end)

    it("reads inline tls in snake or camel case", function()
      local model, warns = ok_model(SECRET .. secret("ca", CA_CRT) .. doc("Host", "h", { "hostname: api.example.com",
        "tlsSecret: {name: cert}", "tls:", "  alpnProtocols: h2", "  min_tls_version: v1.2", "  maxTlsVersion: v1.3",
        "  cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]", "  caSecret: ca", "  certRequired: true" }) .. LISTENERS)
      assert.same({}, warns)
      assert.same({ {
        name = "h",
        hostnames = { "api.example.com" },
        cert_chain_pem = SERVER_CRT,
        private_key_pem = SERVER_KEY,
        ca_pem = CA_CRT,
        cert_required = true,
        alpn_protocols = { "h2" },
        min_tls_version = "v1.2",
        max_tls_version = "v1.3",
        cipher_suites = { "ECDHE-ECDSA-AES128-GCM-SHA256" },
        source = "t.yaml:25: Host h: tlsSecret",
      } }, model.tls_contexts)
      -- Emissary drops a Host whose inline version is wrong
      assert.same({ 't.yaml:17: Host h: tls.minTlsVersion: must be v1.0, v1.1, v1.2 or v1.3, not the string "1.2"' },
        errors_of(SECRET .. doc("Host", "h", { "tlsSecret: {name: cert}", "tls: {minTlsVersion: '1.2'}" })))
    end)

    it("uses the implicit <Host name>-context TLSContext", function()
      local model = ok_model(SECRET .. doc("TLSContext", "h-context", { "hosts: [api.example.com]",
        "alpn_protocols: h2" }) .. doc("Host", "h", { "hostname: api.example.com", "tlsSecret: {name: cert}" })
        .. LISTENERS)
      assert.same({ "h-context" }, names_of(model.tls_contexts))
      assert.same({ "h2" }, model.tls_contexts[1].alpn_protocols)
      assert.equal(SERVER_CRT, model.tls_contexts[1].cert_chain_pem)
      -- an explicit inline tls wins over it, with a word
      local _, warns = ok_model(SECRET .. doc("TLSContext", "h-context", { "alpn_protocols: h2" })
        .. doc("Host", "h", { "hostname: api.example.com", "tlsSecret: {name: cert}", "tls: {alpn_protocols: x}" })
        .. LISTENERS)
      assert.same({ "t.yaml:25: Host h: tls: TLSContext h-context exists too; the inline tls wins (as Emissary)" },
        warns)
    end)

    it("refuses tlsContext with tls, unknown contexts, mismatched hosts and secrets", function()
      local errs = errors_of(SECRET .. secret("other", CLIENT_CRT, CLIENT_KEY)
        .. doc("TLSContext", "ctx", { "hosts: [elsewhere.example.com]", "secret: other" })
        .. doc("Host", "both", { "hostname: a.example.com", "tlsSecret: {name: cert}", "tlsContext: {name: ctx}",
          "tls: {alpn_protocols: h2}" })
        .. doc("Host", "unknown", { "hostname: b.example.com", "tlsSecret: {name: cert}", "tlsContext: {name: nope}" })
        .. doc("Host", "hosts", { "hostname: c.example.com", "tlsSecret: {name: other}", "tlsContext: {name: ctx}" })
        .. doc("TLSContext", "ctx2", { "hosts: [d.example.com]", "secret: other" })
        .. doc("Host", "secret", { "hostname: d.example.com", "tlsSecret: {name: cert}", "tlsContext: {name: ctx2}" })
        .. LISTENERS)
      assert.same({
        "t.yaml:35: Host both: tlsContext: tlsContext and tls cannot both be set (Emissary drops this Host)",
        "t.yaml:45: Host unknown: tlsContext.name: TLSContext nope is not defined",
        "t.yaml:54: Host hosts: tlsContext.name: TLSContext ctx (t.yaml:20) has hosts [elsewhere.example.com], "
          .. "which hold neither this Host's hostname c.example.com nor its name",
        "t.yaml:70: Host secret: tlsSecret: Secret cert does not hold the certificate TLSContext ctx2 (t.yaml:56) "
          .. "already has; Emissary drops this Host",
      }, errs)
    end)

    it("ignores tls and tlsContext without tlsSecret, as Emissary", function()
      local model, warns = ok_model(doc("TLSContext", "ctx", { "alpn_protocols: h2" }) .. doc("Host", "h", {
        "hostname: a.example.com", "tlsContext: {name: ctx}", "requestPolicy: {insecure: {action: Route}}" })
        .. doc("Host", "i", { "hostname: b.example.com", "tls: {alpn_protocols: h2}",
          "requestPolicy: {insecure: {action: Route}}" }) .. LISTENERS)
      assert.same({}, model.tls_contexts)
      assert.same({
        "t.yaml:15: Host h: tlsContext: ignored without tlsSecret, as in Emissary (a TLSContext with hosts still "
          .. "terminates TLS for them)",
        "t.yaml:24: Host i: tls: ignored without tlsSecret, as in Emissary: this Host is cleartext only",
        "t.yaml:43: Listener https: protocol: nothing terminates TLS (no Host tlsSecret, no TLSContext with hosts): "
          .. "this HTTPS Listener serves cleartext only",
      }, warns)
    end)

    it("keeps Redirect as the default insecure action, TLS or not (Emissary)", function()
      local model = ok_model(SECRET .. doc("Host", "tls", { "hostname: a.example.com", "tlsSecret: {name: cert}" })
        .. doc("Host", "plain", { "hostname: b.example.com" }) .. LISTENERS)
      assert.same({ "Redirect", "Redirect" }, { model.hosts[1].insecure_action, model.hosts[2].insecure_action })
    end)
  end)

  describe("default listeners", function()
    local ONE = "no Listener resource: Emissary itself would listen nowhere; nuncio defaults to "
      .. "0.0.0.0:8080 (protocol HTTP, securityModel XFP) like Ambassador's quick-start"
    local TWO = "no Listener resource: Emissary itself would listen nowhere; nuncio defaults to "
      .. "0.0.0.0:8080 (protocol HTTP, securityModel XFP) and 0.0.0.0:8443 (protocol HTTPS, securityModel XFP) "
      .. "like Ambassador's quick-start"
    local SECRET = secret("cert", SERVER_CRT, SERVER_KEY)

    it("listen on 8080 alone without TLS", function()
      local model, warns = ok_model("")
      assert.same({ "default-listener" }, names_of(model.listeners))
      assert.same({ ONE }, warns)
      assert.same({}, model.tls_contexts)
      assert.equal("Route", model.hosts[1].insecure_action)
    end)

    it("add 8443 HTTPS XFP when something terminates TLS", function()
      local model, warns = ok_model(SECRET .. doc("Host", "h", { "hostname: a.example.com", "tlsSecret: {name: cert}" }))
      assert.same({
        { name = "default-listener", address = "0.0.0.0", port = 8080, protocol = "HTTP", tls = false,
          security_model = "XFP", l7_depth = 0, source = "(default)" },
        { name = "default-https-listener", address = "0.0.0.0", port = 8443, protocol = "HTTPS", tls = true,
          security_model = "XFP", l7_depth = 0, source = "(default)" },
      }, model.listeners)
      assert.same({ TWO }, warns)
    end)

    it("take the Hosts' additionalPort for cleartext (-1: none)", function()
      local model = ok_model(SECRET .. doc("Host", "h", { "hostname: a.example.com", "tlsSecret: {name: cert}",
        "requestPolicy: {insecure: {additionalPort: 8081}}" }) .. doc("Host", "g", { "hostname: b.example.com",
        "tlsSecret: {name: cert}", "requestPolicy: {insecure: {additionalPort: -1}}" }))
      assert.same({ 8081, 8443 }, { model.listeners[1].port, model.listeners[2].port })
      assert.same({ "default-listener-8081", "default-https-listener" }, names_of(model.listeners))
      model = ok_model(SECRET .. doc("Host", "h", { "hostname: a.example.com", "tlsSecret: {name: cert}",
        "requestPolicy: {insecure: {additionalPort: -1}}" }))
      assert.same({ "default-https-listener" }, names_of(model.listeners))
    end)

    it("leave the ports to Listener resources when there are some", function()
      local _, warns = ok_model(SECRET .. doc("Host", "h", { "hostname: a.example.com", "tlsSecret: {name: cert}",
        "requestPolicy: {insecure: {additionalPort: 8081}}" }) .. LISTENERS)
      assert.same({ "t.yaml:18: Host h: requestPolicy.insecure.additionalPort: ignored: the Listener resources "
        .. "decide which ports nuncio listens on" }, warns)
    end)

    it("serve fallback-self-signed-cert on the synthesized Host, which then redirects (§2.5)", function()
      local model = ok_model(secret("fallback-self-signed-cert", SERVER_CRT, SERVER_KEY))
      assert.equal("Redirect", model.hosts[1].insecure_action)
      assert.same({ "*" }, model.tls_contexts[1].hostnames)
      assert.equal("default-host", model.tls_contexts[1].name)
      assert.same({ "default-listener", "default-https-listener" }, names_of(model.listeners))
    end)
  end)

  describe("Mapping origination", function()
    local function mapping(body, api)
      local lines = { 'hostname: "*"', "prefix: /p/" }
      for _, l in ipairs(body) do
        lines[#lines + 1] = l
      end
      return doc("Mapping", "m", lines, nil, api)
    end
    local HOST = doc("Host", "h", { 'hostname: "*"', "requestPolicy: {insecure: {action: Route}}" })
    local CTX = doc("TLSContext", "upstream", { "sni: up.example.com", "alpn_protocols: h2",
      "cacert_chain_file: " .. FIX .. "ca.crt", "cert_chain_file: " .. FIX .. "client.crt",
      "private_key_file: " .. FIX .. "client.key", "min_tls_version: v1.2", "cipher_suites: [TLS-ECDHE]" })

    it("originates for https:// with no context, port 443, and says it sends no SNI", function()
      local model, warns = ok_model(mapping({ "service: https://up.example.com", "grpc: true" }) .. HOST .. HTTP_LISTENER)
      assert.same({ name = "up_example_com_443_tls", host = "up.example.com", port = 443, http2 = true,
        tls = { context = "https", source = "t.yaml:9: Mapping m: service" }, connect_timeout_ms = 3000,
        lb = { policy = "round_robin" } },
        model.clusters[1])
      assert.same({ "t.yaml:9: Mapping m: service: sends no SNI (as Emissary); use tls: <TLSContext> with sni if "
        .. "the upstream needs it" }, warns)
    end)

    it("reads tls: true in v2 resources only, with the warnings", function()
      local model, warns = ok_model(mapping({ "service: up:9000", "tls: true" }, "getambassador.io/v2") .. HOST
        .. HTTP_LISTENER)
      assert.same({ context = "true", source = "t.yaml:10: Mapping m: tls" }, model.clusters[1].tls)
      assert.equal(9000, model.clusters[1].port)
      assert.same({
        "t.yaml:10: Mapping m: tls: true verifies nothing (as in Emissary): the upstream's certificate is not checked",
        "t.yaml:10: Mapping m: tls: sends no SNI (as Emissary); use tls: <TLSContext> with sni if the upstream "
          .. "needs it",
      }, warns)
      assert.same({ "t.yaml:10: Mapping m: tls: must be the name of a TLSContext: tls: true is only read in "
        .. "getambassador.io/v2 and older" }, errors_of(mapping({ "service: up", "tls: true" }) .. HTTP_LISTENER))
    end)

    it("takes SNI, ALPN, CA, client certificate, versions and ciphers from tls: <TLSContext>", function()
      local model, warns = ok_model(CTX .. mapping({ "service: up", "tls: upstream", "grpc: true" }) .. HOST
        .. HTTP_LISTENER)
      assert.same({}, warns)
      assert.same({ name = "up_443_tls", host = "up", port = 443, http2 = true, connect_timeout_ms = 3000,
        lb = { policy = "round_robin" }, tls = {
        context = "upstream",
        sni = "up.example.com",
        alpn_protocols = { "h2" },
        ca_pem = CA_CRT,
        cert_chain_pem = CLIENT_CRT,
        private_key_pem = CLIENT_KEY,
        min_tls_version = "v1.2",
        cipher_suites = { "TLS-ECDHE" },
        source = "t.yaml:23: Mapping m: tls",
      } }, model.clusters[1])
      assert.same({}, model.tls_contexts) -- origination only
    end)

    it("takes ecdh_curves from tls: <TLSContext>; none leaves the core's default (Envoy's X25519, P-256)", function()
      local curved = doc("TLSContext", "curved", { "sni: up.example.com", "ecdh_curves: [P-256, X25519]" })
      local model = ok_model(curved .. mapping({ "service: up", "tls: curved" }) .. HOST .. HTTP_LISTENER)
      assert.same({ "P-256", "X25519" }, model.clusters[1].tls.ecdh_curves)
      model = ok_model(CTX .. mapping({ "service: up", "tls: upstream" }) .. HOST .. HTTP_LISTENER)
      assert.is_nil(model.clusters[1].tls.ecdh_curves)
    end)

    it("warns about no SNI when the context has none", function()
      local _, warns = ok_model(doc("TLSContext", "bare", { "alpn_protocols: h2" })
        .. mapping({ "service: https://up", "tls: bare" }) .. HOST .. HTTP_LISTENER)
      assert.same({ "t.yaml:17: Mapping m: tls: sends no SNI (as Emissary); set sni in the TLSContext if the "
        .. "upstream needs it" }, warns)
    end)

    it("refuses unknown contexts and http:// with tls", function()
      local errs = errors_of(CTX .. mapping({ "service: up", "tls: nope" })
        .. doc("Mapping", "plain", { 'hostname: "*"', "prefix: /q/", "service: http://up:80", "tls: upstream" })
        .. HTTP_LISTENER)
      assert.same({
        "t.yaml:23: Mapping m: tls: TLSContext nope is not defined (Emissary: Originate-TLS context nope is not defined)",
        "t.yaml:32: Mapping plain: service: both http:// and tls: http:// never originates TLS; use https:// or drop "
          .. "the scheme (Emissary reports this and originates TLS anyway)",
      }, errs)
    end)

    it("keeps one cluster per TLS context, named by context when they differ", function()
      local function m(name, prefix, extra)
        local body = { 'hostname: "*"', "prefix: " .. prefix, "service: https://up", "grpc: true" }
        if extra then
          body[#body + 1] = extra
        end
        return doc("Mapping", name, body)
      end
      local model = ok_model(CTX .. doc("TLSContext", "other", { "sni: up" }) .. m("a", "/a/") .. m("b", "/b/")
        .. m("c", "/c/", "tls: upstream") .. m("d", "/d/", "tls: upstream") .. m("e", "/e/", "tls: other") .. HOST
        .. HTTP_LISTENER)
      assert.same({ "up_443_tls_https", "up_443_tls_upstream", "up_443_tls_other" }, names_of(model.clusters))
      local by_route = {}
      for _, r in ipairs(model.routes) do
        by_route[r.name] = model.clusters[r.cluster].name
      end
      assert.same({ a = "up_443_tls_https", b = "up_443_tls_https", c = "up_443_tls_upstream",
        d = "up_443_tls_upstream", e = "up_443_tls_other" }, by_route)
    end)
  end)

  describe("errors", function()
    it("are all collected at once, and nothing is half-loaded", function()
      local p = os.tmpname()
      local f = assert(io.open(p, "wb"))
      f:write(secret("bad", "nope") .. doc("TLSContext", "c", { "hosts: [a]",
        "cert_chain_file: /missing.crt", "private_key_file: /missing.key" })
        .. doc("Host", "h", { "hostname: a", "tlsSecret: {name: bad}" })
        .. doc("Mapping", "m", { 'hostname: "*"', "prefix: /", "service: up", "tls: ghost" }) .. LISTENERS)
      f:close()
      local model, errs = amb.load({ p })
      os.remove(p)
      assert.is_nil(model)
      for i, e in ipairs(errs) do
        errs[i] = "t.yaml" .. e:sub(#p + 1)
      end
      assert.same({
        "t.yaml:8: Secret bad: data.tls.crt: not PEM (no -----BEGIN line)",
        "t.yaml:16: TLSContext c: cert_chain_file: cannot read /missing.crt: No such file or directory",
        "t.yaml:17: TLSContext c: private_key_file: cannot read /missing.key: No such file or directory",
        "t.yaml:25: Host h: tlsSecret.name: Secret bad not found in namespace default: no kubernetes.io/tls "
          .. "Secret of that name in the loaded YAML (and no secrets_dir in the native config)",
        "t.yaml:35: Mapping m: tls: TLSContext ghost is not defined (Emissary: Originate-TLS context ghost is not "
          .. "defined)",
      }, errs)
    end)
  end)
end)
