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
-- Appends a run of entries to one receiver's inbox: consecutive items of
-- a call for the same inbox and channel, none with a dedup key (a burst).
-- One INCRBY, one RPUSH and one check for the run instead of one each;
-- the entries and their numbers are what append_one would give one by
-- one. A refusal takes back the run's last entries from the first one
-- refused (as one by one: once the inbox is full, so are the entries after
-- it); the bytes are measured once, with the whole run in, at the first
-- 33rd, 41st, ... position the run reaches. `run`: counter, inbox, mark,
-- channel, and per entry its tail, frame (or false) and the position of
-- its two results (seq, subscribers) in `out`.
local function append_run(run, max, maxbytes, out)
  local k = #run.tails
  if k == 1 then
    local seq, subscribers = append_one(run.counter, run.inbox, '', run.mark, max, maxbytes,
      run.channel, '0', run.tails[1], run.frames[1] or nil)
    out[run.pos[1]], out[run.pos[1] + 1] = seq, subscribers
    return
  end
  local last = redis.call('INCRBY', run.counter, k)
  local f = floor(run.mark)
  if last - k < f then
    last = f + k
    redis.call('SET', run.counter, string.format('%d', last))
  end
  local first = last - k + 1
  local entries = {}
  for i = 1, k do
    local s = string.format('%d', first + i - 1)
    if run.frames[i] then
      entries[i] = s .. ' ' .. run.tails[i] .. run.frames[i]
    else
      entries[i] = s .. ' ' .. run.tails[i]
    end
  end
  local len = redis.call('RPUSH', run.inbox, unpack(entries))
  local base = len - k
  local refused_from, refused = k + 1, false
  if len > max then
    refused_from, refused = math.max(1, max - base + 1), -1
  end
  for i = 1, math.min(k, refused_from - 1) do
    local p = base + i
    if p > 32 and p % 8 == 1 then
      if redis.call('MEMORY', 'USAGE', run.inbox, 'SAMPLES', '0') > maxbytes then
        refused_from, refused = i, -4
      end
      break
    end
  end
  if refused_from <= k then
    redis.call('RPOP', run.inbox, k - refused_from + 1)
    redis.call('DECRBY', run.counter, k - refused_from + 1)
  end
  for i = 1, k do
    local at = run.pos[i]
    if i >= refused_from then
      out[at], out[at + 1] = 0, refused
    elseif run.channel == '' then
      out[at], out[at + 1] = first + i - 1, -3
    else
      out[at], out[at + 1] = first + i - 1, redis.call('SPUBLISH', run.channel, entries[i])
    end
  end
end
-- Adds an item to the call's current run (a new run when it is for
-- another inbox or channel, or the run is long), appending the run it
-- ends; reserves the item's two results in `out`.
local RUN_MAX = 64
local function run_add(current, counter, inbox, mark, channel, tail, frame, max, maxbytes, out)
  if current and (current.counter ~= counter or current.channel ~= channel or #current.tails >= RUN_MAX) then
    append_run(current, max, maxbytes, out)
    current = nil
  end
  if not current then
    current = {counter = counter, inbox = inbox, mark = mark, channel = channel, tails = {}, frames = {}, pos = {}}
  end
  local n = #current.tails + 1
  current.tails[n] = tail
  current.frames[n] = frame or false
  current.pos[n] = #out + 1
  out[#out + 1] = 0
  out[#out + 1] = 0
  return current
end
