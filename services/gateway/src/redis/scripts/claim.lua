-- Claims (or refreshes) one session's place in a user's presence hash
-- (prefixed to the scripts that claim). `key`: the presence hash; `owner`:
-- the session (`node/connection`); `kind`: 'c' classic (holds the user
-- alone) or 'd' device; `ttl` in ms; `max`: the most sessions a user may
-- hold; `now`: Redis's clock in ms. Drops expired fields. Returns 0 when a
-- session it may not share with holds the user, -1 when a new field would
-- pass `max` (nothing changes), else 1 + how many other sessions hold it.
local function claim_one(key, owner, kind, ttl, max, now)
  local fields = redis.call('HGETALL', key)
  local others = 0
  local mine = false
  for i = 1, #fields, 2 do
    local held, expiry = string.match(fields[i + 1], '^(%a):(%d+)$')
    if not expiry or tonumber(expiry) <= now then
      redis.call('HDEL', key, fields[i])
    elseif fields[i] ~= owner then
      if held == 'c' or kind == 'c' then return 0 end
      others = others + 1
    else
      mine = true
    end
  end
  if not mine and others >= max then return -1 end
  redis.call('HSET', key, owner, kind .. ':' .. string.format('%d', now + ttl))
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  return 1 + others
end
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
