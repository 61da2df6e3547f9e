-- nuncio.yaml: the libyaml binding (docs/internals.md §1)
local yaml = require("nuncio.yaml")

local NULL = yaml.null

local function one(text)
  local docs, err = yaml.load(text, "t.yaml")
  assert.is_nil(err)
  assert.equal(1, #docs)
  return docs[1]
end

local function value_of(scalar)
  return one("v: " .. scalar).v
end

local function keys_of(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = tostring(k)
  end
  table.sort(keys)
  return keys
end

describe("nuncio.yaml", function()
  it("exports load, line and a light userdata null", function()
    assert.is_function(yaml.load)
    assert.is_function(yaml.line)
    assert.equal("userdata", type(yaml.null))
    -- the same sentinel every time the module is asked for
    assert.equal(NULL, require("nuncio.yaml").null)
    assert.not_equal(NULL, false)
  end)

  describe("scalars (YAML 1.1 as PyYAML reads them)", function()
    it("reads the PyYAML booleans", function()
      for _, s in ipairs { "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON" } do
        assert.is_true(value_of(s), s)
      end
      for _, s in ipairs { "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF" } do
        assert.is_false(value_of(s), s)
      end
    end)

    it("leaves mixed-case and one-letter forms as strings, as PyYAML does", function()
      assert.equal("tRuE", value_of("tRuE"))
      assert.equal("y", value_of("y"))
      assert.equal("n", value_of("n"))
      assert.equal("oN", value_of("oN"))
    end)

    it("reads null, ~, Null, NULL and the empty value as yaml.null", function()
      for _, s in ipairs { "null", "Null", "NULL", "~", "" } do
        assert.equal(NULL, value_of(s), s)
      end
      assert.equal("nULL", value_of("nULL"))
    end)

    it("keeps a key with an empty value present", function()
      local t = one("a:\nb: 1\n")
      assert.equal(NULL, t.a)
      assert.same({ "a", "b" }, keys_of(t))
    end)

    it("reads integers in every YAML 1.1 base", function()
      assert.equal(12, value_of("12"))
      assert.equal(-3, value_of("-3"))
      assert.equal(12, value_of("+12"))
      assert.equal(31, value_of("0x1f"))
      assert.equal(31, value_of("+0x1F"))
      assert.equal(15, value_of("017"))
      assert.equal(15, value_of("0o17"))
      assert.equal(5, value_of("0b101"))
      assert.equal(-3, value_of("-0b11"))
      assert.equal(1000, value_of("1_000"))
      assert.equal(90, value_of("1:30"))
      assert.equal(-90, value_of("-1:30"))
      assert.equal(0, value_of("0"))
      assert.equal(0, value_of("00"))
      assert.equal("0", tostring(value_of("-0")))
    end)

    it("reads floats", function()
      assert.equal(2.5, value_of("2.5"))
      assert.equal(1, value_of("1."))
      assert.equal(0.5, value_of(".5"))
      assert.equal(100000, value_of("1.0e+5"))
      assert.equal(0.0015, value_of("1.5e-3"))
      assert.equal(685230.15, value_of("190:20:30.15"))
      assert.equal(math.huge, value_of(".inf"))
      assert.equal(-math.huge, value_of("-.Inf"))
      local nan = value_of(".NaN")
      assert.is_true(nan ~= nan)
    end)

    it("leaves near-numbers as strings where PyYAML does", function()
      assert.equal("1.0e5", value_of("1.0e5")) -- PyYAML wants a signed exponent
      assert.equal("1e5", value_of("1e5"))
      assert.equal("-.5", value_of("-.5"))
      assert.equal("08", value_of("08"))
      assert.equal("09", value_of("09"))
      assert.equal("1.2.3", value_of("1.2.3"))
      assert.equal("127.0.0.1:50051", value_of("127.0.0.1:50051"))
      assert.equal("2001-12-14", value_of("2001-12-14")) -- dates stay text
      assert.equal("0x", value_of("0x"))
      assert.equal("_1", value_of("_1"))
    end)

    it("never types quoted or block scalars", function()
      local t = one("a: '12'\nb: \"true\"\nc: |\n  12\nd: >\n  yes\ne: ''\n")
      assert.equal("12", t.a)
      assert.equal("true", t.b)
      assert.equal("12\n", t.c)
      assert.equal("yes\n", t.d)
      assert.equal("", t.e)
    end)

    it("honours the standard explicit tags", function()
      local t = one("a: !!str 12\nb: !!int \"12\"\nc: !!float \"1\"\nd: !!bool \"yes\"\ne: !!null ''\nf: ! 12\n")
      assert.equal("12", t.a)
      assert.equal(12, t.b)
      assert.equal(1, t.c)
      assert.is_true(t.d)
      assert.equal(NULL, t.e)
      assert.equal("12", t.f)
    end)

    it("refuses a value its explicit tag cannot describe", function()
      local docs, err = yaml.load("a: !!int abc\n", "tag.yaml")
      assert.is_nil(docs)
      assert.equal("tag.yaml:1:4: cannot read 'abc' as tag:yaml.org,2002:int", err)
    end)
  end)

  describe("collections", function()
    it("builds mappings with string keys and sequences as arrays", function()
      local t = one("name: x\nlist:\n  - 1\n  - two\n  - [3, 4]\nmap: {a: 1, b: {c: d}}\n")
      assert.same({ name = "x", list = { 1, "two", { 3, 4 } }, map = { a = 1, b = { c = "d" } } }, t)
    end)

    it("turns non-string keys into strings", function()
      local t = one("1: a\ntrue: b\n~: c\n2.5: d\n")
      assert.same({ ["1"] = "a", ["true"] = "b", ["null"] = "c", ["2.5"] = "d" }, t)
    end)

    it("refuses mapping keys that are collections", function()
      local docs, err = yaml.load("? [a, b]\n: c\n", "k.yaml")
      assert.is_nil(docs)
      assert.matches("^k%.yaml:%d+:%d+: mapping keys must be scalars$", err)
    end)

    it("yields only the YAML keys from pairs()", function()
      local t = one("a: 1\nb: [x]\nc: {d: 2}\n")
      assert.same({ "a", "b", "c" }, keys_of(t))
      assert.same({ "1" }, keys_of(t.b))
      assert.same({ "d" }, keys_of(t.c))
      assert.is_nil(getmetatable(t))
    end)

    it("keeps the last of duplicate keys, as PyYAML does", function()
      assert.equal(2, one("a: 1\na: 2\n").a)
    end)
  end)

  describe("positions", function()
    local text = table.concat({
      "# comment",         -- 1
      "top:",              -- 2
      "  name: x",         -- 3
      "  items:",          -- 4
      "    - one",         -- 5
      "    - k: v",        -- 6
      "      k2: v2",      -- 7
      "other: [1,",        -- 8
      "  2]",              -- 9
    }, "\n") .. "\n"

    it("gives the line of a mapping, of its keys and of sequence items", function()
      local t = one(text)
      assert.equal(2, yaml.line(t))
      assert.equal(2, yaml.line(t, "top"))
      assert.equal(8, yaml.line(t, "other"))
      assert.equal(3, yaml.line(t.top))
      assert.equal(3, yaml.line(t.top, "name"))
      assert.equal(4, yaml.line(t.top, "items"))
      assert.equal(5, yaml.line(t.top.items))
      assert.equal(5, yaml.line(t.top.items, 1))
      assert.equal(6, yaml.line(t.top.items, 2))
      assert.equal(6, yaml.line(t.top.items[2]))
      assert.equal(7, yaml.line(t.top.items[2], "k2"))
      assert.equal(9, yaml.line(t.other, 2))
    end)

    it("returns nil for unknown keys and for tables it did not build", function()
      local t = one(text)
      assert.is_nil(yaml.line(t, "missing"))
      assert.is_nil(yaml.line(t.top.items, 3))
      assert.is_nil(yaml.line(t, 0))
      assert.is_nil(yaml.line(t, -1))
      assert.is_nil(yaml.line({}))
      assert.is_nil(yaml.line({ a = 1 }, "a"))
      assert.is_nil(yaml.line("not a table"))
      assert.is_nil(yaml.line(nil))
    end)

    it("counts lines per stream, across documents", function()
      local docs = yaml.load("a: 1\n---\nb: 2\n---\n\nc: 3\n", "m.yaml")
      assert.equal(1, yaml.line(docs[1], "a"))
      assert.equal(3, yaml.line(docs[2], "b"))
      assert.equal(6, yaml.line(docs[3], "c"))
    end)

    it("does not keep loaded tables alive", function()
      local big = {}
      for i = 1, 2000 do
        big[#big + 1] = string.format("k%d: {a: [1, 2, 3], b: text}", i)
      end
      big = table.concat(big, "\n")
      -- Weak references to every table the loads made: once collected, none
      -- may be left, so the positions side table holds nothing strongly.
      -- (Counting bytes instead was flaky: a weak table keeps its grown
      -- capacity after its entries are collected.)
      local seen = setmetatable({}, { __mode = "v" })
      local n = 0
      local function walk(t)
        n = n + 1
        seen[n] = t
        for _, v in pairs(t) do
          if type(v) == "table" then walk(v) end
        end
      end
      local function load_and_walk() -- its frame ends: no stack slot keeps a document
        local doc = yaml.load(big)
        assert.is_table(doc)
        walk(doc)
      end
      for _ = 1, 30 do
        load_and_walk()
      end
      assert.is_true(n > 30 * 2000 * 2)
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(seen), "loaded tables are still reachable after the loads")
    end)
  end)

  describe("anchors and aliases", function()
    it("makes an alias the very same table", function()
      local t = one("base: &b {x: 1}\ncopy: *b\nlist: [*b, *b]\n")
      assert.equal(t.base, t.copy)
      assert.equal(t.base, t.list[1])
      assert.equal(t.base, t.list[2])
    end)

    it("repeats aliased scalars", function()
      local t = one("a: &s hello\nb: *s\nc: &n 12\nd: *n\n")
      assert.equal("hello", t.b)
      assert.equal(12, t.d)
    end)

    it("merges << keys; explicit keys and earlier sources win", function()
      local t = one(table.concat({
        "one: &one {a: 1, b: 1}",
        "two: &two {b: 2, c: 2}",
        "m1:",
        "  a: 0",
        "  <<: *one",
        "m2:",
        "  <<: [*one, *two]",
        "  c: 3",
      }, "\n"))
      assert.same({ a = 0, b = 1 }, t.m1)
      assert.same({ a = 1, b = 1, c = 3 }, t.m2)
      assert.equal(1, yaml.line(t.m2, "a")) -- merged keys keep their own position
    end)

    it("refuses merging something that is not a mapping", function()
      local docs, err = yaml.load("a:\n  <<: 5\n", "merge.yaml")
      assert.is_nil(docs)
      assert.matches("^merge%.yaml:2:%d+: merge key '<<' needs a mapping or a list of mappings$", err)
    end)

    it("reports an undefined alias", function()
      local docs, err = yaml.load("a: *nope\n", "alias.yaml")
      assert.is_nil(docs)
      assert.equal("alias.yaml:1:4: found undefined alias 'nope'", err)
    end)

    it("refuses an alias to a node that contains it", function()
      local docs, err = yaml.load("a: &x [1, *x]\n", "loop.yaml")
      assert.is_nil(docs)
      assert.equal("loop.yaml:1:11: alias 'x' refers to a node that contains it", err)
    end)

    it("scopes anchors to their document", function()
      local docs, err = yaml.load("a: &x 1\n---\nb: *x\n", "scope.yaml")
      assert.is_nil(docs)
      assert.equal("scope.yaml:3:4: found undefined alias 'x'", err)
    end)
  end)

  describe("streams", function()
    it("returns one entry per non-empty document", function()
      local docs = yaml.load("---\n---\na: 1\n---\n# only a comment\n---\n~\n---\n- x\n...\n", "s.yaml")
      assert.same({ { a = 1 }, { "x" } }, docs)
    end)

    it("returns an empty array for an empty text", function()
      assert.same({}, yaml.load("", "e.yaml"))
      assert.same({}, yaml.load("# nothing\n", "e.yaml"))
    end)

    it("keeps scalar documents", function()
      assert.same({ "hello", 12 }, yaml.load("hello\n---\n12\n"))
    end)
  end)

  describe("errors", function()
    it("names file, line, column, problem and context", function()
      local docs, err = yaml.load("a: [1, 2\nb: 3\n", "bad.yaml")
      assert.is_nil(docs)
      assert.equal("bad.yaml:2:2: did not find expected ',' or ']' (while parsing a flow sequence at line 1)", err)
    end)

    it("reports problems without context", function()
      local docs, err = yaml.load("a: b\n c: d\n", "bad.yaml")
      assert.is_nil(docs)
      assert.equal("bad.yaml:2:3: mapping values are not allowed in this context", err)
    end)

    it("uses <string> without a file name", function()
      local _, err = yaml.load("[")
      assert.matches("^<string>:%d+:%d+: ", err)
    end)

    it("gives a line for bad UTF-8", function()
      local docs, err = yaml.load("a: 1\nb: \255\n", "utf.yaml")
      assert.is_nil(docs)
      assert.equal("utf.yaml:2:4: invalid leading UTF-8 octet", err)
    end)

    it("accepts 256 levels of nesting and refuses the 257th", function()
      local ok = yaml.load(string.rep("[", 256) .. string.rep("]", 256))
      assert.is_table(ok)
      local docs, err = yaml.load(string.rep("[", 257) .. string.rep("]", 257), "deep.yaml")
      assert.is_nil(docs)
      assert.equal("deep.yaml:1:257: nesting deeper than 256 levels", err)
    end)

    it("survives hostile nesting and many aliases", function()
      local docs, err = yaml.load(string.rep("- ", 5000) .. "x", "deep.yaml")
      assert.is_nil(docs)
      assert.matches("nesting deeper than 256 levels", err)
      -- a "billion laughs" shape: aliases share tables, so this stays small
      local lol = { "a: &a [x, x, x, x, x, x, x, x, x, x]" }
      for i = 2, 9 do
        local prev = string.char(96 + i - 1)
        local cur = string.char(96 + i)
        lol[#lol + 1] = string.format("%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]",
          cur, cur, prev, prev, prev, prev, prev, prev, prev, prev, prev, prev)
      end
      local t = one(table.concat(lol, "\n"))
      assert.equal(t.h, t.i[1])
    end)

    it("raises on misuse of the API itself", function()
      assert.has_error(function()
        yaml.load(nil)
      end)
      assert.has_error(function()
        yaml.load({})
      end)
    end)

    it("can be called again after an error", function()
      for _ = 1, 50 do
        assert.is_nil((yaml.load("a: [", "x")))
        assert.same({ { a = 1 } }, yaml.load("a: 1"))
      end
    end)
  end)
end)
