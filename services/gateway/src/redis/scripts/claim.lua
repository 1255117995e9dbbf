
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local others = 0
local mine = false
for i = 1, #fields, 2 do
  local kind, expiry = string.match(fields[i + 1], '^(%a):(%d+)$')
  if not expiry or tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif fields[i] ~= ARGV[1] then
    if kind == 'c' or ARGV[2] == 'c' then return 0 end
    others = others + 1
  else
    mine = true
  end
end
if not mine and others >= tonumber(ARGV[4]) then return -1 end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. string.format('%d', now + ttl))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1 + others