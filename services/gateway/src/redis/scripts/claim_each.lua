local now, ttl, max = clock_ms(), tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  out[i] = claim_one(KEYS[i], ARGV[1 + 2 * i], ARGV[2 + 2 * i], ttl, max, now)
end
return out
