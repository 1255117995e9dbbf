-- Records one entry in one receiver's inbox (prefixed, after counter.lua,
-- to the scripts that append). KEYS of the receiver: counter, inbox, dedup
-- key; `mark` is the slot's epoch mark. `ttl`: dedup TTL in seconds ('0':
-- no dedup key; '-TTL': a retry, which also looks for the message id among
-- the inbox's newest entries). `channel`: where to publish ('' = do not).
-- `tail`: the entry after its sequence ("mid sender micros tp\nframe"), or
-- when `frame` is given, the part of it before `frame` (one concatenation
-- builds the entry, not two).
-- Returns seq, subscribers; subscribers -1: inbox full, -2: duplicate,
-- -3: not published, -4: inbox over its bytes.
local function append_one(counter, inbox, dedup, mark, max, maxbytes, channel, ttl, tail, frame)
  local scan = string.sub(ttl, 1, 1) == '-'
  if scan then ttl = string.sub(ttl, 2) end
  local prev = false
  if ttl ~= '0' then prev = redis.call('GET', dedup) end
  if scan and not prev then
    -- A retry whose first attempt may have landed without a dedup key.
    local whole = tail
    if frame then whole = tail .. frame end
    local mid = string.match(whole, '^(%S+) ')
    for _, e in ipairs(redis.call('LRANGE', inbox, -64, -1)) do
      local s, m = string.match(e, '^(%d+) (%S+) ')
      if m == mid then prev = s end
    end
  end
  if prev then return tonumber(prev), -2 end
  local seq = next_number(counter, mark)
  local s = string.format('%d', seq)
  local entry
  if frame then entry = s .. ' ' .. tail .. frame else entry = s .. ' ' .. tail end
  local len = redis.call('RPUSH', inbox, entry)
  -- Over the limit: take it back, and the number (numbers jump only
  -- between epochs). Bytes are measured only for a backlog (an inbox
  -- being read stays short), and then at every 8th entry (33rd, 41st,
  -- ...): MEMORY USAGE walks the list's nodes, and a Redis command in a
  -- script costs about 2 us. So an inbox may go up to 7 entries over its
  -- bytes before one is refused.
  local refused = false
  if len > max then
    refused = -1
  elseif len > 32 and len % 8 == 1 and redis.call('MEMORY', 'USAGE', inbox, 'SAMPLES', '0') > maxbytes then
    refused = -4
  end
  if refused then
    redis.call('RPOP', inbox)
    redis.call('DECR', counter)
    return 0, refused
  end
  if ttl ~= '0' then redis.call('SET', dedup, s, 'EX', ttl) end
  if channel == '' then return seq, -3 end
  return seq, redis.call('SPUBLISH', channel, entry)
end
