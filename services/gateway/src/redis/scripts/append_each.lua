local keys, argv, per = item_keys()
local n = math.floor(#keys / per)
local max, maxbytes = tonumber(argv[1]), tonumber(argv[2])
local tails = 3 + 3 * n
local out = {}
for i = 0, n - 1 do
  local k, a = per * i, 2 + 3 * i
  local seq, subscribers = append_one(keys[k + 1], keys[k + 2], keys[k + 3], mark_of(keys, per, k),
    max, maxbytes, argv[a + 1], argv[a + 2], argv[tails + tonumber(argv[a + 3])])
  out[#out + 1] = seq
  out[#out + 1] = subscribers
end
return out
