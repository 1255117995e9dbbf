local keys, argv = KEYS, ARGV
if #KEYS == 0 then
  -- Keys in ARGV (their count first): users of many slots of one shard.
  -- Every key is looked at before anything is written, so a slot this
  -- node no longer serves fails the call having changed nothing.
  local n = tonumber(ARGV[1])
  keys, argv = {}, {}
  for i = 2, n + 1 do keys[#keys + 1] = ARGV[i] end
  for i = n + 2, #ARGV do argv[#argv + 1] = ARGV[i] end
  for i = 1, n do redis.call('EXISTS', keys[i]) end
end
local now, ttl, max = clock_ms(), tonumber(argv[1]), tonumber(argv[2])
local out = {}
for i = 1, #keys do
  out[i] = claim_one(keys[i], argv[1 + 2 * i], argv[2 + 2 * i], ttl, max, now)
end
return out
