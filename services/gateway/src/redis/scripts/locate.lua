
-- The index (from 0) of the first inbox entry numbered above `seq`, which
-- is also how many are numbered up to it. Numbers run without gaps within
-- an epoch (counter.lua), so the position tells, except across a jump:
-- then a binary search.
local function number_at(key, i)
  return tonumber(string.match(redis.call('LINDEX', key, i), '^%d+'))
end
local function first_above(key, seq)
  local first = redis.call('LINDEX', key, 0)
  if not first or tonumber(string.match(first, '^%d+')) > seq then return 0 end
  local len = redis.call('LLEN', key)
  local guess = seq - tonumber(string.match(first, '^%d+')) + 1
  if guess < len then
    if number_at(key, guess) == seq + 1 then return guess end
  elseif number_at(key, -1) <= seq then
    return len
  end
  local lo, hi = 1, len
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if number_at(key, mid) > seq then hi = mid else lo = mid + 1 end
  end
  return lo
end