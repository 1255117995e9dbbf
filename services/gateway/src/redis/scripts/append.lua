
local n = (#KEYS - 1) / 3
local max, maxbytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local tails = 3 + 3 * n
local out = {}
for i = 0, n - 1 do
  local k, a = 3 * i, 2 + 3 * i
  local channel, ttl = ARGV[a + 1], ARGV[a + 2]
  local scan = string.sub(ttl, 1, 1) == '-'
  if scan then ttl = string.sub(ttl, 2) end
  local prev = false
  if ttl ~= '0' then prev = redis.call('GET', KEYS[k + 3]) end
  if scan and not prev then
    -- A retry whose first attempt may have landed without a dedup key.
    local mid = string.match(ARGV[tails + tonumber(ARGV[a + 3])], '^(%S+) ')
    for _, e in ipairs(redis.call('LRANGE', KEYS[k + 2], -64, -1)) do
      local s, m = string.match(e, '^(%d+) (%S+) ')
      if m == mid then prev = s end
    end
  end
  local seq, subscribers
  if prev then
    seq, subscribers = tonumber(prev), -2
  else
    seq = next_number(KEYS[k + 1], KEYS[#KEYS])
    local s = string.format('%d', seq)
    local entry = s .. ' ' .. ARGV[tails + tonumber(ARGV[a + 3])]
    -- Bytes are measured only for a backlog (an inbox being read stays
    -- short): MEMORY USAGE walks the list's nodes.
    if redis.call('LLEN', KEYS[k + 2]) >= 32
      and redis.call('MEMORY', 'USAGE', KEYS[k + 2], 'SAMPLES', '0') + #entry > maxbytes then
      redis.call('DECR', KEYS[k + 1])
      seq, subscribers = 0, -4
    elseif redis.call('RPUSH', KEYS[k + 2], entry) > max then
      -- Over the limit: take it back, and the number (numbers jump only
      -- between epochs).
      redis.call('RPOP', KEYS[k + 2])
      redis.call('DECR', KEYS[k + 1])
      seq, subscribers = 0, -1
    else
      if ttl ~= '0' then redis.call('SET', KEYS[k + 3], s, 'EX', ttl) end
      subscribers = -3
      if channel ~= '' then subscribers = redis.call('SPUBLISH', channel, entry) end
    end
  end
  out[#out + 1] = seq
  out[#out + 1] = subscribers
end
return out