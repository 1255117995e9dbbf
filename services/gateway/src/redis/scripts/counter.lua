
-- Counters that never go back (prefixed to the scripts that number).
-- A counter is a hash: n, the last number given; e, the epoch it was given
-- in: the data's history (master_replid: new at every start from the
-- append-only file and at every promotion of a replica) and its last save
-- (LASTSAVE: when the process started, or last saved). A Redis that
-- restarted from older data, or a replica that took over before it had
-- the newest writes, holds counters behind numbers already handed out; the
-- first number a counter gives in a new epoch therefore jumps to the clock
-- (microseconds), above every number given before. In the second a save
-- or start happened the epoch is not yet told apart from the one before,
-- so a number given then jumps again at the next one.
local epoch_now, clock_now
local function epoch()
  if epoch_now == nil then
    local t = redis.call('TIME')
    clock_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local saved = redis.call('LASTSAVE')
    if saved < tonumber(t[1]) then
      local info = redis.call('INFO', 'replication')
      epoch_now = string.match(info, 'master_replid:(%x+)') .. ':' .. saved
    else
      epoch_now = '-'
    end
  end
  return epoch_now
end
local function next_number(key)
  local v = redis.call('HMGET', key, 'n', 'e')
  local n, e = tonumber(v[1]), epoch()
  if n == nil or e == '-' or v[2] ~= e then
    n = math.max((n or 0) + 1, clock_now)
    redis.call('HSET', key, 'n', string.format('%d', n), 'e', e)
  else
    n = n + 1
    redis.call('HSET', key, 'n', string.format('%d', n))
  end
  return n
end
-- Gives back the number just given (a refused append).
local function take_back(key, n)
  redis.call('HSET', key, 'n', string.format('%d', n - 1))
end