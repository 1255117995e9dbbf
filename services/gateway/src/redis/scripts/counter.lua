
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
-- One call may number in several slots (a cluster shard's batch), each
-- with its own mark: the clock and the epoch are read once per call, each
-- mark once per call.
local clock_now, epoch_now
local floors = {}
local function floor(mark_key)
  local cached = floors[mark_key]
  if cached then return cached end
  if clock_now == nil then
    local t = redis.call('TIME')
    clock_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local saved = redis.call('LASTSAVE')
    epoch_now = '-'
    if saved < tonumber(t[1]) then
      epoch_now = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') .. ':' .. saved
    end
  end
  local mark = redis.call('GET', mark_key)
  local e, f
  if mark then e, f = string.match(mark, '^(%S+) (%d+)$') end
  local result
  if epoch_now ~= '-' and e == epoch_now then
    result = tonumber(f)
  else
    result = clock_now
    redis.call('SET', mark_key, epoch_now .. ' ' .. string.format('%d', clock_now))
  end
  floors[mark_key] = result
  return result
end
-- On a cluster one call serves every slot of a shard that a batch touches:
-- it declares no keys (a script without flags may touch any slot its node
-- serves; one its node does not serve is an error) and passes them first
-- in ARGV: ARGV[1] = how many, then 4 per item (its 3 keys and its slot's
-- epoch mark). Every item's keys are looked at before anything is written,
-- so a call that meets a slot on its way to another node fails having
-- written nothing (the caller then goes slot by slot, following redirects).
-- Returns the keys, the rest of ARGV and the keys per item; with declared
-- KEYS (one slot), 3 per item and the mark last.
local function item_keys()
  if #KEYS > 0 then return KEYS, ARGV, 3 end
  local n = tonumber(ARGV[1])
  local keys, rest = {}, {}
  for i = 2, n + 1 do keys[#keys + 1] = ARGV[i] end
  for i = n + 2, #ARGV do rest[#rest + 1] = ARGV[i] end
  for i = 1, n, 4 do redis.call('EXISTS', keys[i], keys[i + 1], keys[i + 2], keys[i + 3]) end
  return keys, rest, 4
end
-- The epoch mark of the item whose keys start after `k`.
local function mark_of(keys, per, k)
  if per == 4 then return keys[k + 4] end
  return keys[#keys]
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