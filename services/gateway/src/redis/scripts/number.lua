
local out = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  local k, a = 3 * i, 2 + 7 * i
  local ttl = ARGV[a + 1]
  local prev = false
  if ttl ~= '0' then prev = redis.call('GET', KEYS[k + 2]) end
  if prev then
    out[i + 1] = tonumber(prev)
  else
    local seq = next_number(KEYS[k + 1], KEYS[#KEYS])
    local s = string.format('%d', seq)
    if ttl ~= '0' then redis.call('SET', KEYS[k + 2], s, 'EX', ttl) end
    redis.call('XADD', KEYS[k + 3], 'MAXLEN', '~', ARGV[1], '*',
      'op', 'm', 'mid', ARGV[a + 2], 'conv', ARGV[a + 3], 'seq', s,
      'from', ARGV[a + 4], 'at', ARGV[a + 5], 'tp', ARGV[a + 6],
      'frame', ARGV[a + 7] .. s .. '}')
    -- Bytes too: now and then, a stream over its budget loses its oldest
    -- entries (the history service has read them, unless it is down).
    local len = redis.call('XLEN', KEYS[k + 3])
    if len % 64 == 0 then
      local bytes = redis.call('MEMORY', 'USAGE', KEYS[k + 3])
      if bytes > tonumber(ARGV[2]) then
        redis.call('XTRIM', KEYS[k + 3], 'MAXLEN',
          math.floor(len * tonumber(ARGV[2]) / bytes * 0.9))
      end
    end
    out[i + 1] = seq
  end
end
return out