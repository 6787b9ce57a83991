-- One message through a milter with Debian's miltertest, for tests/test_serve_milter.sh.
-- miltertest -D sock=unix:PATH -D msg=FILE -D out=FILE -s serve_milter.lua
-- Sends FILE's header fields (unfolded) and body, then writes what the filter did at end of message to OUT
-- as NAME=VALUE lines: reply (the milter reply character), add.NAME (value of an added header),
-- del.NAME (true/false: a header of that name was deleted), quarantine, replycode (the filter answered with
-- its own SMTP reply code: our reject; miltertest does not show the code itself).
local f = assert(io.open(msg, "rb"))
local raw = f:read("a")
f:close()
local hend = raw:find("\r?\n\r?\n")
local head, body = raw, ""
if hend then
    local s, e = raw:find("\r?\n\r?\n")
    head, body = raw:sub(1, s - 1), raw:sub(e + 1)
end
head = head:gsub("\r?\n[ \t]+", " ") -- unfold

local conn = mt.connect(sock, 40, 0.25)
if conn == nil then error("cannot connect to " .. sock) end
if mt.conninfo(conn, "localhost", "127.0.0.1") ~= nil then error("conninfo") end
if mt.mailfrom(conn, "<sender@example.org>") ~= nil then error("mailfrom") end
for line in (head .. "\n"):gmatch("([^\n]*)\n") do
    line = line:gsub("\r$", "")
    local name, value = line:match("^([^:%s]+):%s*(.*)$")
    if name then
        if mt.header(conn, name, value) ~= nil then error("header " .. name) end
    end
end
if mt.eoh(conn) ~= nil then error("eoh") end
if #body > 0 and mt.bodystring(conn, body) ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end

local o = assert(io.open(out, "w"))
o:write("reply=" .. string.char(mt.getreply(conn)) .. "\n")
for _, h in ipairs({"X-Spam-Flag", "X-Spam-Status", "X-Spam-Level", "X-TBert-Spam"}) do
    local v = mt.getheader(conn, h, 0)
    if v ~= nil then o:write("add." .. h .. "=" .. v .. "\n") end
    o:write("del." .. h .. "=" .. tostring(mt.eom_check(conn, MT_HDRDELETE, h)) .. "\n")
end
o:write("quarantine=" .. tostring(mt.eom_check(conn, MT_QUARANTINE)) .. "\n")
o:write("replycode=" .. tostring(mt.getreply(conn) == SMFIR_REPLYCODE) .. "\n") -- a reply with its own SMTP code (the reject)
o:close()
mt.disconnect(conn)
