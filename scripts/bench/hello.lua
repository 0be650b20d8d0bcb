-- hello.lua: the start-up benchmark (8): a whole run of a trivial script.
print("hello, world")
