local keys, argv, per = item_keys()
local out = {}
for i = 0, math.floor(#keys / per) - 1 do
  local k, a = per * i, 2 + 8 * i
  out[i + 1] = number_chat(keys[k + 1], keys[k + 2], keys[k + 3], mark_of(keys, per, k),
    argv[1], argv[2], argv[a + 1], argv[a + 2], argv[a + 3], argv[a + 4], argv[a + 5],
    argv[a + 6], argv[a + 7], argv[a + 8])
end
flush_history()
return out
