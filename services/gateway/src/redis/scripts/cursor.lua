
local n = 0
for i = 1, #KEYS do
  local v = tonumber(ARGV[2 * i])
  local now = tonumber(redis.call('HGET', KEYS[i], ARGV[2 * i - 1]) or '0')
  if v > now then
    redis.call('HSET', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
    n = n + 1
  end
end
return n