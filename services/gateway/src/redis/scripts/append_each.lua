local n = (#KEYS - 1) / 3
local max, maxbytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local tails = 3 + 3 * n
local out = {}
for i = 0, n - 1 do
  local k, a = 3 * i, 2 + 3 * i
  local seq, subscribers = append_one(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[#KEYS],
    max, maxbytes, ARGV[a + 1], ARGV[a + 2], ARGV[tails + tonumber(ARGV[a + 3])])
  out[#out + 1] = seq
  out[#out + 1] = subscribers
end
return out
