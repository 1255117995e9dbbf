-- Ends one session's place in a user's presence hash (KEYS[1]; ARGV[1]:
-- the session, `node/connection`) and drops fields whose expiry passed (a
-- session of a node that died). Returns how many sessions still hold the
-- user: 0 means the user went offline with this call (the key is gone).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HDEL', KEYS[1], ARGV[1])
local fields = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #fields, 2 do
  local expiry = string.match(fields[i + 1], '^%a:(%d+)$')
  if expiry and tonumber(expiry) > now then
    live = live + 1
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if live == 0 then redis.call('DEL', KEYS[1]) end
return live
