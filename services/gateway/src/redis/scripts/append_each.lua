local keys, argv, per = item_keys()
local n = math.floor(#keys / per)
local max, maxbytes = tonumber(argv[1]), tonumber(argv[2])
local tails = 3 + 3 * n
local out = {}
-- Consecutive appends to one inbox without dedup keys go as one run
-- (append_run); an append with a dedup key ends the run and goes alone.
local run = nil
for i = 0, n - 1 do
  local k, a = per * i, 2 + 3 * i
  local ttl, tail = argv[a + 2], argv[tails + tonumber(argv[a + 3])]
  if ttl == '0' then
    run = run_add(run, keys[k + 1], keys[k + 2], mark_of(keys, per, k), argv[a + 1], tail, nil,
      max, maxbytes, out)
  else
    if run then append_run(run, max, maxbytes, out); run = nil end
    local seq, subscribers = append_one(keys[k + 1], keys[k + 2], keys[k + 3], mark_of(keys, per, k),
      max, maxbytes, argv[a + 1], ttl, tail)
    out[#out + 1] = seq
    out[#out + 1] = subscribers
  end
end
if run then append_run(run, max, maxbytes, out) end
return out
