local max, maxbytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local k, a = 0, 4
-- Consecutive appends to one inbox without dedup keys go as one run
-- (append_run); an append with a dedup key ends the run and goes alone.
local run = nil
while a < #ARGV do
  local receivers, nttl, attl = tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3]
  local frame = ARGV[a + 10]
  local cseq = 0
  if nttl ~= '-' then
    cseq, frame = number_chat(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[#KEYS], ARGV[3], ARGV[4],
      nttl, ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], frame)
    k = k + 3
  end
  out[#out + 1] = cseq
  local head = ARGV[a + 9]
  a = a + 10
  for r = 1, receivers do
    if attl == '0' then
      run = run_add(run, KEYS[k + 1], KEYS[k + 2], KEYS[#KEYS], ARGV[a + r], head, frame, max, maxbytes, out)
    else
      if run then append_run(run, max, maxbytes, out); run = nil end
      local seq, subscribers = append_one(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[#KEYS],
        max, maxbytes, ARGV[a + r], attl, head, frame)
      out[#out + 1] = seq
      out[#out + 1] = subscribers
    end
    k = k + 3
  end
  a = a + receivers
end
if run then append_run(run, max, maxbytes, out) end
flush_history()
return out
