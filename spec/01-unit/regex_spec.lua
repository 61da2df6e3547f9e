local regex = require("nuncio.regex")

local function compile(p, opts)
  local re, err = regex.compile(p, opts)
  assert(re, err)
  return re
end

describe("nuncio.regex", function()
  describe("compile", function()
    it("returns an object for a valid pattern", function()
      local re, err = regex.compile("/api/v[0-9]+/.*")
      assert.is_nil(err)
      assert.is_table(re)
      assert.equal("/api/v[0-9]+/.*", re.pattern)
      assert.equal("regex(/api/v[0-9]+/.*)", tostring(re))
    end)

    it("rejects a pattern that does not compile, with PCRE2's message and the offset", function()
      local re, err = regex.compile("/api/(v1")
      assert.is_nil(re)
      assert.matches("invalid regex", err, 1, true)
      assert.matches("missing closing parenthesis", err, 1, true)
      assert.matches("at offset 8", err, 1, true)
    end)

    it("caps the pattern size", function()
      local ok = regex.compile(string.rep("a", regex.MAX_PATTERN))
      assert.is_table(ok)
      local re, err = regex.compile(string.rep("a", regex.MAX_PATTERN + 1))
      assert.is_nil(re)
      assert.matches("limit is " .. regex.MAX_PATTERN, err, 1, true)
    end)

    it("raises on a non-string pattern (API misuse)", function()
      assert.has_error(function() regex.compile(42) end, "regex.compile: pattern must be a string")
    end)

    it("rejects constructs RE2 does not have", function()
      local bad = {
        { "a(?=b)", "lookahead" },
        { "a(?!b)", "lookahead" },
        { "(?<=a)b", "lookbehind" },
        { "(?<!a)b", "lookbehind" },
        { "(?>a+)b", "atomic group" },
        { "(a)\\1", "backreference" },
        { "(?P<n>a)(?P=n)", "backreference" },
        { "(a|b(?1))", "recursion" },
        { "a(?R)?", "recursion" },
        { "(*FAIL)", "verb" },
        { "a\\Kb", "\\K" },
        { "(a)(?(1)a|b)", "conditional" },
      }
      for _, case in ipairs(bad) do
        local re, err = regex.compile(case[1])
        assert.is_nil(re, case[1])
        assert.matches(case[2], err, 1, true)
        assert.matches("RE2", err, 1, true)
      end
    end)

    it("accepts RE2 syntax that looks like those constructs", function()
      local good = {
        "(?:ab)+", "(?i)abc", "(?i:a)b", "(?P<name>a)b", "(?<name>a)b",
        "[(?=]x", "\\(?=x", "\\Q(?=\\E", "[[:alpha:]]+", "[]a]", "[^]a]", "[](?=]",
      }
      for _, p in ipairs(good) do
        local re, err = regex.compile(p)
        assert.is_nil(err, p)
        assert.is_table(re, p)
      end
      assert.is_true(compile("\\Q(?=\\E"):full_match("(?="))
      assert.is_true(compile("[(?=]x"):full_match("=x"))
      assert.is_true(compile("[](?=]"):full_match("]"))
    end)
  end)

  describe("full_match", function()
    it("is anchored at both ends", function()
      local re = compile("a+")
      assert.is_true(re:full_match("aaa"))
      assert.is_false(re:full_match("baaa"))
      assert.is_false(re:full_match("aaab"))
      assert.is_false(re:full_match(""))
    end)

    it("anchors each alternative, not only the first and last", function()
      local re = compile("foo|bar")
      assert.is_true(re:full_match("bar"))
      assert.is_false(re:full_match("foobar"))
      assert.is_false(re:full_match("xbar"))
    end)

    it("can test a leading part of the subject without copying it", function()
      local re = compile("/v[0-9]+/items")
      assert.is_true(re:full_match("/v2/items?x=1", 9))
      assert.is_false(re:full_match("/v2/items?x=1"))
      assert.is_true(re:full_match("/v2/items", 100))
    end)

    it("treats $ as the very end, as RE2 does", function()
      assert.is_false(compile("a$"):full_match("a\n"))
      assert.is_true(compile("a$"):full_match("a"))
    end)

    it("does not let . match a newline", function()
      assert.is_false(compile("a.b"):full_match("a\nb"))
      assert.is_true(compile("a.b"):full_match("a-b"))
    end)

    it("works on UTF-8 characters, not bytes", function()
      assert.is_true(compile("."):full_match("é"))
      assert.is_false(compile(".."):full_match("é"))
    end)

    it("fails quietly on a subject that is not valid UTF-8", function()
      local ok, err = compile("a.*"):full_match("a\xff\xfe")
      assert.is_false(ok)
      assert.is_nil(err)
      assert.is_true(compile("a.*"):full_match("a\xff\xfe", 1))
    end)

    it("is case-sensitive unless asked", function()
      assert.is_false(compile("abc"):full_match("ABC"))
      assert.is_true(compile("abc", { caseless = true }):full_match("AbC"))
      assert.is_true(compile("(?i)abc"):full_match("aBc"))
    end)

    it("gives up on catastrophic backtracking with an error instead of stalling", function()
      local re = compile("(a+)+$")
      local ok, err = re:full_match(string.rep("a", 40) .. "b")
      assert.is_false(ok)
      assert.matches("limit", err, 1, true)
      assert.is_true(re:full_match(string.rep("a", 40)))
    end)

    it("gives the same answers when one object is reused many times", function()
      local re = compile("/p/[a-z]+")
      for i = 1, 500 do
        assert.equal(i % 2 == 0, re:full_match(i % 2 == 0 and "/p/abc" or "/p/ABC"))
      end
    end)

    it("survives garbage collection of many compiled regexes", function()
      for i = 1, 300 do
        local re = compile("x" .. i .. "[0-9]*")
        assert.is_true(re:full_match("x" .. i .. "7"))
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(compile("y"):full_match("y"))
    end)
  end)

  describe("find", function()
    it("returns the 1-based bounds of the first match", function()
      local re = compile("v[0-9]+")
      local s, e = re:find("/api/v12/x")
      assert.equal(6, s)
      assert.equal(8, e)
    end)

    it("returns nil when there is no match", function()
      assert.is_nil(compile("v[0-9]+"):find("/api/x"))
    end)

    it("starts at init", function()
      local re = compile("ab")
      local s, e = re:find("ab-ab", 2)
      assert.equal(4, s)
      assert.equal(5, e)
      assert.is_nil(re:find("ab", 3))
    end)

    it("does not let $ match before a final newline", function()
      assert.is_nil(compile("a$"):find("a\n"))
      assert.equal(1, (compile("a$"):find("a")))
    end)

    it("reports an empty match like string.find", function()
      local s, e = compile("x*"):find("abc")
      assert.equal(1, s)
      assert.equal(0, e)
    end)

    it("does not disturb full_match on the same object", function()
      local re = compile("[0-9]+")
      assert.equal(3, (re:find("ab123")))
      assert.is_false(re:full_match("ab123"))
      assert.is_true(re:full_match("123"))
    end)
  end)
end)
