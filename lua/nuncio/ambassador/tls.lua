-- nuncio.ambassador.tls: certificates and TLS settings for the model
-- (docs/internals.md §6; behaviour notes §1.11, §2.1, §2.5, §4).
--
-- Lua resolves every certificate to PEM text and checks only that it looks
-- like PEM; C parses it later and reports bad certificates against `source`.
--
--   tls.base64_decode(s)                    -> bytes | nil, err
--   tls.read_secret(rep, res, doc)          -> secret | nil   (Kubernetes Secret)
--   tls.store(rep, secrets, secrets_dir)    -> store
--   tls.context(rep, res, store)            -> ctx | nil      (TLSContext resource)
--   tls.builder(rep, store, contexts)       -> b
--     b:host(res, host, extra)               a Host's tlsSecret / tlsContext / tls
--     b:fallback_host(host, namespace)       §2.5 default-host with fallback-self-signed-cert
--     b:finish(no_hosts)                     -> model.tls_contexts
--     b:origination(rep, res, ref, service)  -> clusters[i].tls table | false

local check = require("nuncio.ambassador.check")
local fs = require("nuncio.ambassador.fs")

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local io_open = io.open
local setmetatable = setmetatable
local string_byte = string.byte
local string_char = string.char
local string_find = string.find
local string_format = string.format
local string_sub = string.sub
local math_floor = math.floor
local table_concat = table.concat

local M = {}

local TLS_SECRET_TYPE = "kubernetes.io/tls"
local FALLBACK_SECRET = "fallback-self-signed-cert"
local DEFAULT_ALPN = { "h2", "http/1.1" }
local VERSIONS = check.set { "v1.0", "v1.1", "v1.2", "v1.3" }

---------------------------------------------------------------------------
-- base64 and PEM

local B64 = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, 64 do
    B64[string_byte(alphabet, i)] = i - 1
  end
end
local PAD = string_byte("=")

local function show_byte(b)
  if b >= 33 and b <= 126 then
    return string_format("%q", string_char(b))
  end
  return string_format("byte 0x%02x", b)
end

-- Standard base64 with padding, as Kubernetes writes Secret data. Line breaks
-- are skipped (Go's decoder does the same); anything else outside the
-- alphabet, a length that is not a multiple of 4 or misplaced padding is refused.
function M.base64_decode(s)
  s = s:gsub("[\r\n]", "")
  local n = #s
  if n % 4 ~= 0 then
    return nil, string_format("not base64: length %d is not a multiple of 4", n)
  end
  local out, chunk = {}, {}
  for i = 1, n, 4 do
    local a, b, c, d = string_byte(s, i, i + 3)
    local va, vb, vc, vd = B64[a], B64[b], B64[c], B64[d]
    local last = i + 3 == n
    if not va or not vb then
      local bad = va and b or a
      return nil, "not base64: unexpected " .. show_byte(bad)
    end
    local v = va * 262144 + vb * 4096
    if c == PAD then
      if d ~= PAD or not last then
        return nil, "not base64: '=' before the end"
      end
      chunk[#chunk + 1] = string_char(math_floor(v / 65536))
    elseif not vc then
      return nil, "not base64: unexpected " .. show_byte(c)
    elseif d == PAD then
      if not last then
        return nil, "not base64: '=' before the end"
      end
      v = v + vc * 64
      chunk[#chunk + 1] = string_char(math_floor(v / 65536), math_floor(v / 256) % 256)
    elseif not vd then
      return nil, "not base64: unexpected " .. show_byte(d)
    else
      v = v + vc * 64 + vd
      chunk[#chunk + 1] = string_char(math_floor(v / 65536), math_floor(v / 256) % 256, v % 256)
    end
    if #chunk == 1024 then
      out[#out + 1] = table_concat(chunk)
      chunk = {}
    end
  end
  out[#out + 1] = table_concat(chunk)
  return table_concat(out)
end

function M.is_pem(s)
  return string_find(s, "-----BEGIN ", 1, true) ~= nil
end

local NOT_PEM = "not PEM (no -----BEGIN line)"

---------------------------------------------------------------------------
-- Kubernetes Secrets

local SECRET_KEYS = { { "tls.crt", "crt" }, { "tls.key", "key" }, { "ca.crt", "ca" } }

-- read_secret(rep, res, doc) -> { name, namespace, source, crt, key, ca } | nil
--   res: the envelope nuncio.ambassador built (kind "Secret", name, namespace)
-- Secrets of another type than kubernetes.io/tls are skipped without a word.
function M.read_secret(rep, res, doc)
  local c = check.fields(rep, res, doc)
  if c:raw("type") ~= TLS_SECRET_TYPE then
    return nil
  end
  local data = c:sub("data")
  local sdata = c:sub("stringData")
  local s = { name = res.name, namespace = res.namespace, source = res.source, res = res }
  for _, k in ipairs(SECRET_KEYS) do
    local key, slot = k[1], k[2]
    -- stringData is merged over data by the API server: it wins
    local cur = sdata:has(key) and sdata or (data:has(key) and data or nil)
    local text = cur and cur:string(key)
    if text then
      if cur == data then
        local bytes, err = M.base64_decode(text)
        if not bytes then
          cur:fail(key, err)
          text = nil
        else
          text = bytes
        end
      end
      if text and not M.is_pem(text) then
        cur:fail(key, NOT_PEM)
        text = nil
      end
      s[slot] = text
    end
  end
  if not data:has("tls.crt") and not sdata:has("tls.crt") and not c.failed then
    c:missing("data", "a kubernetes.io/tls Secret needs tls.crt (in data, base64, or in stringData)")
  end
  if c.failed or data.failed or sdata.failed then
    return nil
  end
  return s
end

---------------------------------------------------------------------------
-- the secret store: Secrets from the YAML, then the secrets folder

local Store = {}
Store.__index = Store

function M.store(rep, secrets, secrets_dir)
  local by_key = {}
  for _, s in ipairs(secrets or {}) do
    local key = s.name .. "\0" .. s.namespace
    local first = by_key[key]
    if first then
      rep:error(s.res, nil, string_format("duplicate Secret name in namespace %s (first defined at %s)",
        s.namespace, first.source))
    else
      by_key[key] = s
    end
  end
  return setmetatable({ by_key = by_key, dir = secrets_dir, files = {} }, Store)
end

local function read_pem(path)
  local text, err = fs.read(path)
  if not text then
    err = tostring(err)
    -- io.open says "PATH: reason"
    if string_sub(err, 1, #path + 2) == path .. ": " then
      err = string_sub(err, #path + 3)
    end
    return nil, string_format("cannot read %s: %s", path, err)
  end
  if not M.is_pem(text) then
    return nil, path .. " is " .. NOT_PEM
  end
  return text
end

local function exists(path)
  local f = io_open(path, "rb")
  if f then
    f:close()
    return true
  end
  return false
end

-- one secret from the folder: NAME/tls.crt + tls.key (+ ca.crt), a mounted
-- Kubernetes secret volume; else NAME.crt + NAME.key. nil when neither exists.
function Store:from_dir(name)
  local cached = self.files[name]
  if cached then
    return cached.s, cached.err
  end
  local dir = self.dir
  local crt_path, key_path, ca_path
  if fs.is_dir(dir .. "/" .. name) then
    crt_path, key_path, ca_path = dir .. "/" .. name .. "/tls.crt", dir .. "/" .. name .. "/tls.key",
      dir .. "/" .. name .. "/ca.crt"
  elseif exists(dir .. "/" .. name .. ".crt") then
    crt_path, key_path = dir .. "/" .. name .. ".crt", dir .. "/" .. name .. ".key"
  else
    self.files[name] = {}
    return nil
  end
  local s, err = { name = name, source = crt_path }, nil
  s.crt, err = read_pem(crt_path)
  if s.crt and exists(key_path) then
    s.key, err = read_pem(key_path)
  end
  if not err and ca_path and exists(ca_path) then
    s.ca, err = read_pem(ca_path)
  end
  if err then
    s = nil
  end
  self.files[name] = { s = s, err = err }
  return s, err
end

-- find(name, namespace, written) -> secret | nil, why
--   written: the reference as the resource spelled it ("cert.ns"), tried
--   first in the folder, which has no namespaces
function Store:find(name, namespace, written)
  local s = self.by_key[name .. "\0" .. namespace]
  if s then
    return s
  end
  local tried = {}
  if self.dir then
    local names = { written or name }
    if written and written ~= name then
      names[2] = name
    end
    for _, n in ipairs(names) do
      if n ~= "" and not n:find("/", 1, true) and n ~= "." and n ~= ".." then
        local found, err = self:from_dir(n)
        if err then
          return nil, err
        elseif found then
          return found
        end
        tried[#tried + 1] = self.dir .. "/" .. n .. "/tls.crt"
        tried[#tried + 1] = self.dir .. "/" .. n .. ".crt"
      end
    end
  end
  local why = string_format("Secret %s not found in namespace %s: no kubernetes.io/tls Secret of that name in "
    .. "the loaded YAML", name, namespace)
  if self.dir then
    why = why .. ", nor " .. check.join(tried, " nor ")
  else
    why = why .. " (and no secrets_dir in the native config)"
  end
  return nil, why
end

---------------------------------------------------------------------------
-- TLS settings: a TLSContext, or a Host's inline tls (snake or camel case)

local CAMEL = {
  alpn_protocols = "alpnProtocols", cipher_suites = "cipherSuites", ecdh_curves = "ecdhCurves",
  redirect_cleartext_from = "redirectCleartextFrom", cert_required = "certRequired",
  min_tls_version = "minTlsVersion", max_tls_version = "maxTlsVersion", cert_chain_file = "certChainFile",
  private_key_file = "privateKeyFile", cacert_chain_file = "cacertChainFile", crl_secret = "crlSecret",
  crl_file = "crlFile", ca_secret = "caSecret",
}

local CONTEXT_FIELDS = check.set {
  "hosts", "secret", "cert_chain_file", "private_key_file", "ca_secret", "cacert_chain_file", "cert_required",
  "alpn_protocols", "min_tls_version", "max_tls_version", "cipher_suites", "ecdh_curves", "sni",
  "redirect_cleartext_from", "secret_namespacing", "crl_secret", "crl_file", "ambassador_id", "generation",
}

local INLINE_FIELDS = {}
for k in pairs(CONTEXT_FIELDS) do
  if k ~= "hosts" and k ~= "secret" and k ~= "ambassador_id" and k ~= "generation" then
    INLINE_FIELDS[k] = true
    if CAMEL[k] then
      INLINE_FIELDS[CAMEL[k]] = true
    end
  end
end

-- the key this mapping uses for a setting: Emissary lets camelCase win
local function key_of(c, snake, camel_ok)
  local camel = camel_ok and CAMEL[snake]
  if camel and c:has(camel) then
    return camel
  end
  return snake
end

-- "h2,http/1.1" or [h2, http/1.1] (Envoy joins the list and splits on commas)
local function read_alpn(c, key)
  local v = c:raw(key)
  if v == nil then
    return nil
  end
  local items
  if type(v) == "string" then
    items = { v }
  elseif type(v) == "table" and check.is_list(v) then
    items = v
  else
    c:fail(key, "must be a string such as \"h2,http/1.1\" or a list of strings, not " .. check.describe(v))
    return nil
  end
  local out = {}
  for i = 1, #items do
    if type(items[i]) ~= "string" then
      c:fail(key, "must be a string such as \"h2,http/1.1\" or a list of strings, not a list holding "
        .. check.describe(items[i]))
      return nil
    end
    for p in items[i]:gmatch("[^,]+") do
      p = p:match("^%s*(.-)%s*$")
      if #p > 255 then
        c:fail(key, string_format("protocol name %q is longer than 255 bytes", string_sub(p, 1, 20) .. "..."))
        return nil
      elseif p ~= "" then
        out[#out + 1] = p
      end
    end
  end
  if #out == 0 then
    return nil
  end
  return out
end

local function read_version(c, key, strict)
  local v = c:raw(key)
  if v == nil then
    return nil
  end
  if type(v) ~= "string" or not VERSIONS[v] then
    local msg = "must be v1.0, v1.1, v1.2 or v1.3, not " .. check.describe(v)
    if strict then
      c:fail(key, msg) -- a Host's inline tls: Emissary drops the Host
    else
      c:warn(key, msg .. "; ignored (as Emissary does)")
    end
    return nil
  end
  return v
end

local function resolve_path(res, path)
  return fs.join(fs.dirname(res.file), path)
end

-- the secret a TLSContext names: "name" or "name.namespace" (§0, §4)
local function context_secret(store, c, key, namespacing)
  local written = c:string(key)
  if not written then
    return nil
  end
  if written == "" then
    c:fail(key, "must not be empty")
    return nil
  end
  local name, ns = written, c.res.namespace
  if namespacing then
    local n, s = written:match("^(.*)%.([^.]*)$")
    if n and n ~= "" and s ~= "" then
      name, ns = n, s
    end
  end
  local s, why = store:find(name, ns, written)
  if not s then
    c:fail(key, why)
    return nil
  end
  return s
end

-- "FILE:LINE: Kind NAME: FIELD", the `source` C prefixes its messages with
local function where(res, tbl, key, field)
  return string_format("%s:%d: %s %s: %s", res.file, check.line_of(res, tbl, key), res.kind, tostring(res.name),
    field)
end

local function source_of(c, key)
  return where(c.res, c.tbl, key, c:field(key))
end

-- read_settings(c, store, opts) -> settings (c.failed tells about errors)
--   opts.inline: a Host's tls (camelCase keys too, strict versions, no secret)
function M.read_settings(c, store, opts)
  opts = opts or {}
  local inline = opts.inline
  local function k(snake)
    return key_of(c, snake, inline)
  end
  local st = {}
  st.alpn = read_alpn(c, k("alpn_protocols"))
  st.cert_required = c:bool(k("cert_required"), false)
  st.cert_required_key = k("cert_required")
  st.min = read_version(c, k("min_tls_version"), inline)
  st.max = read_version(c, k("max_tls_version"), inline)
  if st.min and st.max and st.min > st.max then
    c:fail(k("min_tls_version"), string_format("%s is above max_tls_version %s", st.min, st.max))
  end
  st.ciphers = c:string_list(k("cipher_suites"))
  st.curves = c:string_list(k("ecdh_curves"))
  st.sni = c:string("sni")
  if c:has(k("redirect_cleartext_from")) then
    c:int(k("redirect_cleartext_from"), nil, 1, 65535)
    c:warn(k("redirect_cleartext_from"), "not implemented, ignored: use a Host's requestPolicy.insecure.action")
  end
  for _, key in ipairs { "crl_secret", "crl_file" } do
    if c:has(k(key)) then
      c:warn(k(key), "not implemented yet, ignored (no revocation lists)")
    end
  end
  local namespacing = c:bool("secret_namespacing", true)
  if inline and c:has("secret_namespacing") then
    c:warn("secret_namespacing", "has no effect in a Host's tls: tlsSecret has its own namespace field")
  end

  -- the certificate: secret xor cert_chain_file + private_key_file
  local chain_key, pkey_key = k("cert_chain_file"), k("private_key_file")
  local has_chain, has_pkey = c:has(chain_key), c:has(pkey_key)
  if not inline and c:has("secret") then
    if has_chain then
      c:fail("secret", "set either secret or cert_chain_file (with private_key_file), not both")
    else
      local s = context_secret(store, c, "secret", namespacing)
      if s then
        if not s.key then
          c:fail("secret", string_format("Secret %s has no tls.key: a certificate needs its private key", s.name))
        else
          st.cert, st.key, st.ca = s.crt, s.key, s.ca
          st.cert_source = source_of(c, "secret")
        end
      end
    end
  elseif has_chain or has_pkey then
    if inline and opts.has_secret then
      c:fail(has_chain and chain_key or pkey_key, "the certificate comes from tlsSecret; "
        .. "set cert_chain_file and private_key_file in a TLSContext without tlsSecret instead")
    elseif not has_pkey then
      c:fail(chain_key, "needs private_key_file as well")
    elseif not has_chain then
      c:fail(pkey_key, "needs cert_chain_file as well")
    else
      local chain, pkey = c:string(chain_key), c:string(pkey_key)
      if chain and pkey then
        local path = resolve_path(c.res, chain)
        local text, err = read_pem(path)
        if not text then
          c:fail(chain_key, err)
        end
        local kpath = resolve_path(c.res, pkey)
        local ktext, kerr = read_pem(kpath)
        if not ktext then
          c:fail(pkey_key, kerr)
        end
        if text and ktext then
          st.cert, st.key = text, ktext
          st.cert_source = source_of(c, chain_key)
        end
      end
    end
  end

  -- the CA: ca_secret, else cacert_chain_file, else the secret's ca.crt
  local ca_secret_key, ca_file_key = k("ca_secret"), k("cacert_chain_file")
  if c:has(ca_secret_key) then
    if c:has(ca_file_key) then
      c:warn(ca_file_key, "both ca_secret and cacert_chain_file are set, using ca_secret (as Emissary)")
    end
    local s = context_secret(store, c, ca_secret_key, namespacing)
    if s then
      st.ca = s.crt
    end
  elseif c:has(ca_file_key) then
    local path = c:string(ca_file_key)
    if path then
      local text, err = read_pem(resolve_path(c.res, path))
      if not text then
        c:fail(ca_file_key, err)
      else
        st.ca = text
      end
    end
  end
  return st
end

-- context(rep, res, store) -> ctx | nil
function M.context(rep, res, store)
  local c = check.fields(rep, res, res.spec)
  local hosts = c:string_list("hosts")
  if hosts then
    for i = 1, #hosts do
      if hosts[i] == "" then
        c:fail("hosts", "must not hold an empty name")
      end
    end
    if #hosts == 0 then
      hosts = nil
    end
  end
  local st = M.read_settings(c, store)
  c:check_keys(CONTEXT_FIELDS)
  if c.failed then
    return nil
  end
  st.name = res.name
  st.namespace = res.namespace
  st.res = res
  st.hosts = hosts
  st.source = res.source
  return st
end

---------------------------------------------------------------------------
-- termination: Hosts and TLSContexts -> model.tls_contexts

local Builder = {}
Builder.__index = Builder

--   contexts: the TLSContexts that loaded; broken: set of names that did not
function M.builder(rep, store, contexts, broken)
  local by_name = {}
  for _, ctx in ipairs(contexts) do
    local list = by_name[ctx.name]
    if not list then
      list = {}
      by_name[ctx.name] = list
    end
    list[#list + 1] = ctx
  end
  return setmetatable({ rep = rep, store = store, contexts = contexts, by_name = by_name, entries = {},
    broken = broken or {} }, Builder)
end

-- a TLSContext by name, preferring the referrer's namespace. nil, nil for a
-- TLSContext that exists but has errors of its own (already reported).
function Builder:find(name, namespace)
  local list = self.by_name[name]
  if not list then
    if self.broken[name] then
      return nil, nil
    end
    return nil, string_format("TLSContext %s is not defined", name)
  end
  if #list == 1 then
    return list[1]
  end
  local names = {}
  for _, ctx in ipairs(list) do
    if ctx.namespace == namespace then
      return ctx
    end
    names[#names + 1] = ctx.namespace
  end
  return nil, string_format("TLSContext %s is defined in several namespaces (%s), none of them %s", name,
    check.join(names), namespace)
end

-- SNI is the hostname without a port (Emissary: hostname.rsplit(":", 1)[0])
local function sni_of(hostname)
  return hostname:match("^(.*):%d+$") or hostname
end

local function sni_matchable(name)
  if name == "*" or not name:find("*", 1, true) then
    return true
  end
  return string_sub(name, 1, 2) == "*." and not name:find("*", 3, true)
end

local function contains(list, v)
  for i = 1, #list do
    if list[i] == v then
      return true
    end
  end
  return false
end

-- the entry a settings record terminates with (created on first use)
function Builder:entry_of(st, res, field)
  if not st.entry then
    st.entry = { st = st, res = res, field = field, hostnames = {} }
    if st.hosts then
      for i = 1, #st.hosts do
        st.entry.hostnames[i] = st.hosts[i]
      end
    end
    self.entries[#self.entries + 1] = st.entry
  end
  return st.entry
end

local function add_name(entry, name)
  if not contains(entry.hostnames, name) then
    entry.hostnames[#entry.hostnames + 1] = name
  end
end

-- a Host's tlsSecret with a TLSContext (named, or the implicit <Host>-context)
function Builder:use_context(res, host, field, ctx, secret)
  local rep = self.rep
  local sni = sni_of(host.hostname)
  if ctx.hosts and not contains(ctx.hosts, host.hostname) and not contains(ctx.hosts, res.name) then
    rep:error(res, field, string_format("TLSContext %s (%s) has hosts [%s], which hold neither this Host's "
      .. "hostname %s nor its name", ctx.name, ctx.source, check.join(ctx.hosts), host.hostname),
      res.spec, field == "tlsContext.name" and "tlsContext" or "tlsSecret")
    return
  end
  if ctx.cert then
    if ctx.cert ~= secret.crt or ctx.key ~= secret.key then
      rep:error(res, "tlsSecret", string_format("Secret %s does not hold the certificate TLSContext %s (%s) "
        .. "already has; Emissary drops this Host", secret.name, ctx.name, ctx.source), res.spec, "tlsSecret")
      return
    end
  else
    ctx.cert, ctx.key = secret.crt, secret.key
    ctx.ca = ctx.ca or secret.ca
    ctx.cert_source = where(res, res.spec, "tlsSecret", "tlsSecret")
  end
  add_name(self:entry_of(ctx, ctx.res, "hosts"), sni)
end

-- host(res, host, extra): extra = { tls_secret = {name, namespace}, tls_context = name,
-- tls_inline = tbl } from kinds.host
function Builder:host(res, host, extra)
  local rep = self.rep
  local ts = extra.tls_secret
  if not ts then
    if extra.tls_context then
      rep:warning(res, "tlsContext", "ignored without tlsSecret, as in Emissary (a TLSContext with hosts "
        .. "still terminates TLS for them)", res.spec, "tlsContext")
    end
    if extra.tls_inline then
      rep:warning(res, "tls", "ignored without tlsSecret, as in Emissary: this Host is cleartext only",
        res.spec, "tls")
    end
    return
  end
  if extra.tls_context and extra.tls_inline then
    rep:error(res, "tlsContext", "tlsContext and tls cannot both be set (Emissary drops this Host)",
      res.spec, "tlsContext")
    return
  end
  local secret, why = self.store:find(ts.name, ts.namespace or res.namespace,
    ts.namespace and ts.name .. "." .. ts.namespace or ts.name)
  if not secret then
    rep:error(res, "tlsSecret.name", why, ts.tbl, "name")
    return
  end
  if not secret.key then
    rep:error(res, "tlsSecret.name", string_format("Secret %s has no tls.key: a certificate needs its private key",
      secret.name), ts.tbl, "name")
    return
  end
  local sni = sni_of(host.hostname)
  if not sni_matchable(sni) then
    rep:warning(res, "hostname", string_format("SNI matches exact names and leading '*.' globs only: clients "
      .. "sending SNI never select this certificate for %s (it serves them only as the default one)", sni),
      res.spec, "hostname")
  end

  local implicit_name = res.name .. "-context"
  local implicit = self.by_name[implicit_name] and self:find(implicit_name, res.namespace) or nil
  if extra.tls_context then
    if implicit then
      rep:warning(res, "tlsContext", string_format("TLSContext %s exists too; tlsContext wins (as Emissary)",
        implicit_name), res.spec, "tlsContext")
    end
    local ctx, err = self:find(extra.tls_context, res.namespace)
    if not ctx then
      if err then
        rep:error(res, "tlsContext.name", err, extra.tls_context_tbl, "name")
      end
      return
    end
    self:use_context(res, host, "tlsContext.name", ctx, secret)
  elseif extra.tls_inline then
    if implicit then
      rep:warning(res, "tls", string_format("TLSContext %s exists too; the inline tls wins (as Emissary)",
        implicit_name), res.spec, "tls")
    end
    local c = check.fields(rep, res, extra.tls_inline, "tls.")
    local st = M.read_settings(c, self.store, { inline = true, has_secret = true })
    c:check_keys(INLINE_FIELDS)
    if c.failed then
      return
    end
    st.name = res.name
    st.res = res
    st.source = res.source
    st.cert, st.key = secret.crt, secret.key
    st.ca = st.ca or secret.ca
    st.cert_source = where(res, res.spec, "tlsSecret", "tlsSecret")
    add_name(self:entry_of(st, res, "tls"), sni)
  elseif implicit then
    self:use_context(res, host, "tlsSecret", implicit, secret)
  else
    local st = {
      name = res.name, res = res, source = res.source,
      cert = secret.crt, key = secret.key, ca = secret.ca, cert_required = false,
      cert_source = where(res, res.spec, "tlsSecret", "tlsSecret"),
    }
    add_name(self:entry_of(st, res, "tlsSecret"), sni)
  end
end

-- §2.5: no Host and a Secret fallback-self-signed-cert in Ambassador's
-- namespace: the synthesized "*" Host terminates TLS with it (and redirects).
function Builder:fallback_host(host, namespace)
  local s = self.store.by_key[FALLBACK_SECRET .. "\0" .. namespace]
  if not s and self.store.dir then
    local err
    s, err = self.store:from_dir(FALLBACK_SECRET)
    if err then
      self.rep:raw_warning(err .. ": the fallback certificate is not used; the default Host serves cleartext")
    end
  end
  if not s or not s.key then
    return false
  end
  local st = { name = host.name, source = s.source, cert = s.crt, key = s.key, ca = s.ca, cert_required = false,
    cert_source = s.res and s.res.source .. ": Secret " .. s.name or s.source }
  add_name(self:entry_of(st, nil, nil), "*")
  return true
end

-- finish(no_hosts) -> model.tls_contexts (errors and warnings go to rep)
function Builder:finish(no_hosts)
  local rep = self.rep
  -- TLSContexts with hosts that no Host named still terminate for them
  for _, ctx in ipairs(self.contexts) do
    if ctx.hosts and not ctx.entry then
      if no_hosts then
        rep:warning(ctx.res, "hosts", "no Host resource: Emissary 2+ ignores TLSContexts that terminate TLS "
          .. "when no Host exists; nuncio serves them, as Ambassador 1.x did", ctx.res.spec, "hosts")
      end
      self:entry_of(ctx, ctx.res, "hosts")
    end
  end
  local out, served = {}, {}
  for _, e in ipairs(self.entries) do
    local st = e.st
    local ok = true
    if not st.cert then
      rep:error(e.res, "hosts", "terminating TLS for these hosts needs a certificate: set secret, or "
        .. "cert_chain_file and private_key_file (or name this TLSContext in a Host with tlsSecret)",
        e.res.spec, "hosts")
      ok = false
    elseif st.cert_required and not st.ca then
      rep:error(e.res, (e.field == "tls" and "tls." or "") .. st.cert_required_key,
        "needs a CA to check client certificates against: set cacert_chain_file or ca_secret",
        e.field == "tls" and e.res.spec.tls or e.res.spec, st.cert_required_key)
      ok = false
    end
    local source = st.cert_source or st.source
    for _, name in ipairs(e.hostnames) do
      local first = served[name]
      if first and e.res then
        rep:warning(e.res, e.field, string_format("%s is also served by %s (%s): clients sending that SNI get "
          .. "the first one's certificate", name, first.st.name, first.st.cert_source or first.st.source),
          e.res.spec, e.field)
      elseif not first then
        served[name] = e
      end
    end
    if ok then
      out[#out + 1] = {
        name = st.name,
        hostnames = e.hostnames,
        cert_chain_pem = st.cert,
        private_key_pem = st.key,
        ca_pem = st.ca,
        cert_required = st.cert_required or false,
        alpn_protocols = st.alpn or { DEFAULT_ALPN[1], DEFAULT_ALPN[2] },
        min_tls_version = st.min,
        max_tls_version = st.max,
        cipher_suites = st.ciphers,
        ecdh_curves = st.curves,
        source = source,
      }
    end
  end
  return out
end

---------------------------------------------------------------------------
-- origination: a Mapping's service scheme and tls -> clusters[i].tls

-- origination(res, ref) -> tls table | nil (errors reported)
--   ref = { kind = "https" | "true" | "name", name = "ctx", field = "tls" | "service" }
function Builder:origination(res, ref)
  local rep = self.rep
  local t = {
    context = ref.kind == "name" and ref.name or ref.kind,
    source = where(res, res.spec, ref.field, ref.field),
  }
  if ref.kind == "name" then
    local ctx, err = self:find(ref.name, res.namespace)
    if not ctx then
      if err then
        rep:error(res, "tls", err .. " (Emissary: Originate-TLS context " .. ref.name .. " is not defined)",
          res.spec, "tls")
      end
      return nil
    end
    t.sni = ctx.sni
    t.alpn_protocols = ctx.alpn
    t.ca_pem = ctx.ca
    t.cert_chain_pem = ctx.cert
    t.private_key_pem = ctx.key
    t.min_tls_version = ctx.min
    t.max_tls_version = ctx.max
    t.cipher_suites = ctx.ciphers
    t.ecdh_curves = ctx.curves
  elseif ref.kind == "true" then
    rep:warning(res, "tls", "true verifies nothing (as in Emissary): the upstream's certificate is not checked",
      res.spec, "tls")
  end
  if not t.sni then
    if ref.kind == "name" then
      rep:warning(res, ref.field, "sends no SNI (as Emissary); set sni in the TLSContext if the upstream needs it",
        res.spec, ref.field)
    else
      rep:warning(res, ref.field, "sends no SNI (as Emissary); use tls: <TLSContext> with sni if the upstream "
        .. "needs it", res.spec, ref.field)
    end
  end
  return t
end

return M
