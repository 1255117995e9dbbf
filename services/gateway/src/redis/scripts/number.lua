-- Numbers one chat in its conversation and appends it to the history
-- stream (prefixed, after counter.lua, to the scripts that number). KEYS of
-- the chat: the conversation's counter, the dedup key, the stream; `mark`
-- is the slot's epoch mark. `ttl`: dedup TTL in seconds ('0': none).
-- `head`: the frame up to its "cseq":. `log`: '0', or the MAXLEN of the
-- conversation's log (`STREAM:l:CONV`, a group's one copy of each chat that
-- members read by cursor) that the chat is appended to as well, with its
-- number as id. The history entry is one field, `m` =
-- "CONV SEQ MID FROM AT TP\nFRAME" (one argument instead of eight: a
-- Redis command in a script pays for each). Returns the chat's number (a
-- retry: the first one's) and its frame, numbered.
local function number_chat(counter, dedup, stream, mark, maxlen, maxbytes, ttl, mid, conv, from, at, tp, head, log)
  local prev = false
  if ttl ~= '0' then prev = redis.call('GET', dedup) end
  if prev then return tonumber(prev), head .. prev .. '}' end
  local seq = next_number(counter, mark)
  local s = string.format('%d', seq)
  if ttl ~= '0' then redis.call('SET', dedup, s, 'EX', ttl) end
  local frame = head .. s .. '}'
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
    'm', conv .. ' ' .. s .. ' ' .. mid .. ' ' .. from .. ' ' .. at .. ' ' .. tp .. '\n' .. frame)
  if log and log ~= '0' then
    redis.call('XADD', stream .. ':l:' .. conv, 'MAXLEN', '~', log, s .. '-0',
      'e', s .. ' ' .. mid .. ' ' .. from .. ' ' .. at .. ' ' .. tp .. '\n' .. frame)
  end
  -- Bytes too: now and then (every 64th chat of a conversation), a stream
  -- over its budget loses its oldest entries (the history service has read
  -- them, unless it is down).
  if seq % 64 == 0 then
    local len = redis.call('XLEN', stream)
    local bytes = redis.call('MEMORY', 'USAGE', stream)
    if bytes > tonumber(maxbytes) then
      redis.call('XTRIM', stream, 'MAXLEN', math.floor(len * tonumber(maxbytes) / bytes * 0.9))
    end
  end
  return seq, frame
end
