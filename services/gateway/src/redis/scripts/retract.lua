
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'op', 'x', 'mid', ARGV[2], 'conv', ARGV[3], 'seq', ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0