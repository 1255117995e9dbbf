
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local delivered = tonumber(redis.call('GET', KEYS[3]) or '0')
local out = {last, delivered}
local start = first_above(KEYS[2], tonumber(ARGV[1]))
local entries = redis.call('LRANGE', KEYS[2], start, start + tonumber(ARGV[2]) - 1)
local budget = tonumber(ARGV[3])
for i = 1, #entries do
  budget = budget - #entries[i]
  if budget < 0 and i > 1 then break end
  out[#out + 1] = entries[i]
end
return out