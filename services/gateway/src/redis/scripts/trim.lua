
local out = {}
for i = 1, #KEYS / 3 do
  local inbox, delivered, presence = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local up_to = ARGV[1 + i]
  local removed = 0
  if ARGV[1] == 's' and redis.call('EXISTS', presence) == 1 then
    removed = -1
  else
    if ARGV[1] ~= 's' then
      local d = tonumber(redis.call('GET', delivered) or '0')
      if tonumber(up_to) > d then redis.call('SET', delivered, up_to) end
    end
    local n = first_above(inbox, tonumber(up_to))
    if n > 0 then
      if n >= redis.call('LLEN', inbox) then
        redis.call('DEL', inbox)
      else
        redis.call('LTRIM', inbox, n, -1)
      end
      removed = n
    end
  end
  out[i] = removed
end
return out