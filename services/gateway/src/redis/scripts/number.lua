-- Numbers one chat in its conversation and appends it to the history
-- stream (prefixed, after counter.lua, to the scripts that number). KEYS of
-- the chat: the conversation's counter, the dedup key, the stream; `mark`
-- is the slot's epoch mark. `ttl`: dedup TTL in seconds ('0': none).
-- `head`: the frame up to its "cseq":. `log`: '0', or the MAXLEN of the
-- conversation's log (`STREAM:l:CONV`, a group's one copy of each chat that
-- members read by cursor) that the chat is appended to as well, with its
-- number as id. A chat's history item is one field, `m` =
-- "CONV SEQ MID FROM AT TP\nFRAME" (one argument instead of eight: a
-- Redis command in a script pays for each). Returns the chat's number (a
-- retry: the first one's) and its frame, numbered.
--
-- History items wait for the end of the call (`flush_history`, which
-- every script that numbers calls before it returns): a call's items for
-- one stream become one entry, the field `m` once per chat, up to
-- HISTORY_ENTRY_CHATS chats and HISTORY_ENTRY_BYTES (a chat larger than
-- that is an entry alone). So a batch costs one XADD per stream it
-- touches, not one per chat: an XADD in a script cost Redis about a
-- quarter of a chat's numbering and append (bench/redis-calls.sh).
local HISTORY_ENTRY_CHATS, HISTORY_ENTRY_BYTES = 64, 16384
local history, history_order = {}, {}
local function history_entry(stream, h)
  redis.call('XADD', stream, 'MAXLEN', '~', h.maxlen, '*', unpack(h.fields))
  -- Bytes too: now and then (when a chat numbered 64, 128, ... of a
  -- conversation is in the entry), a stream over its budget loses its
  -- oldest entries (the history service has read them, unless it is down).
  if h.trim then
    local len = redis.call('XLEN', stream)
    local bytes = redis.call('MEMORY', 'USAGE', stream)
    if bytes > tonumber(h.maxbytes) then
      redis.call('XTRIM', stream, 'MAXLEN', math.floor(len * tonumber(h.maxbytes) / bytes * 0.9))
    end
  end
end
local function history_add(stream, maxlen, maxbytes, item, trim)
  local h = history[stream]
  if h and (#h.fields >= 2 * HISTORY_ENTRY_CHATS or h.bytes + #item > HISTORY_ENTRY_BYTES) then
    history_entry(stream, h)
    h = nil
  end
  if not h then
    h = {fields = {}, bytes = 0, maxlen = maxlen, maxbytes = maxbytes, trim = false}
    if history[stream] == nil then history_order[#history_order + 1] = stream end
    history[stream] = h
  end
  h.fields[#h.fields + 1] = 'm'
  h.fields[#h.fields + 1] = item
  h.bytes = h.bytes + #item
  h.trim = h.trim or trim
end
local function flush_history()
  for _, stream in ipairs(history_order) do history_entry(stream, history[stream]) end
  history, history_order = {}, {}
end
local function number_chat(counter, dedup, stream, mark, maxlen, maxbytes, ttl, mid, conv, from, at, tp, head, log)
  local prev = false
  if ttl ~= '0' then prev = redis.call('GET', dedup) end
  if prev then return tonumber(prev), head .. prev .. '}' end
  local seq = next_number(counter, mark)
  local s = string.format('%d', seq)
  if ttl ~= '0' then redis.call('SET', dedup, s, 'EX', ttl) end
  local frame = head .. s .. '}'
  history_add(stream, maxlen, maxbytes,
    conv .. ' ' .. s .. ' ' .. mid .. ' ' .. from .. ' ' .. at .. ' ' .. tp .. '\n' .. frame, seq % 64 == 0)
  if log and log ~= '0' then
    redis.call('XADD', stream .. ':l:' .. conv, 'MAXLEN', '~', log, s .. '-0',
      'e', s .. ' ' .. mid .. ' ' .. from .. ' ' .. at .. ' ' .. tp .. '\n' .. frame)
  end
  return seq, frame
end
