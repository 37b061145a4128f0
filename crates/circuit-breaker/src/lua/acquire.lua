-- SharedMachine::acquire_probe. ARGV[16]: lease id. Reply: granted (1/0), then reply().
local lease = ARGV[16]
advance()
local granted = 0
if st == 'half_open' then
  redis.call('ZREMRANGEBYSCORE', LK, '-inf', int(now))
  if redis.call('ZCARD', LK) + succ < PROBES then
    redis.call('ZADD', LK, int(now + LEASE), lease)
    granted = 1
  end
end
save()
local r = reply()
table.insert(r, 1, granted)
return r
