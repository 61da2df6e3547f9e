std = "luajit"
globals = {}
read_globals = { "describe", "it", "before_each", "after_each", "setup", "teardown", "assert", "spy", "stub", "pending", "finally" }
max_line_length = 120
