local out = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  local k, a = 3 * i, 2 + 7 * i
  out[i + 1] = number_chat(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[#KEYS], ARGV[1], ARGV[2],
    ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
end
return out
