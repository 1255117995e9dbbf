
-- Counters that never go back (prefixed to the scripts that number).
-- Redis can come back with older data than the numbers it handed out (a
-- restart that lost the last second, a backup put back, a replica promoted
-- before it had the newest writes); a number given again would be dropped as
-- a repeat. So each slot has an epoch mark (the last key of the call):
-- the epoch, the data's history (master_replid: new at every start from
-- the append-only file and at every promotion) and its last save
-- (LASTSAVE), and the floor, Redis's clock in microseconds when the epoch
-- was first seen, above every number given before. A counter still below
-- the floor jumps over it; within an epoch numbers run without gaps. In the
-- second a save or start happened the epoch is not yet told apart from the
-- one before, so the floor then moves with the clock at every call.
local floor_now
local function floor(mark_key)
  if floor_now == nil then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local saved = redis.call('LASTSAVE')
    local epoch = '-'
    if saved < tonumber(t[1]) then
      epoch = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') .. ':' .. saved
    end
    local mark = redis.call('GET', mark_key)
    local e, f
    if mark then e, f = string.match(mark, '^(%S+) (%d+)$') end
    if epoch ~= '-' and e == epoch then
      floor_now = tonumber(f)
    else
      floor_now = now
      redis.call('SET', mark_key, epoch .. ' ' .. string.format('%d', now))
    end
  end
  return floor_now
end
local function next_number(key, mark_key)
  local n = redis.call('INCR', key)
  local f = floor(mark_key)
  if n <= f then
    n = f + 1
    redis.call('SET', key, string.format('%d', n))
  end
  return n
end