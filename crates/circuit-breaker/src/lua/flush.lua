-- SharedMachine::flush. ARGV[16..20]: instance, calls, failures, slow calls, failing (1/0).
local instance = ARGV[16]
local calls, fails, slows = tonumber(ARGV[17]), tonumber(ARGV[18]), tonumber(ARGV[19])
advance()
local sec = int(math.floor(now / 1000))
if calls > 0 then
  redis.call('HINCRBY', BK, 'c:' .. sec, calls)
  if fails > 0 then redis.call('HINCRBY', BK, 'f:' .. sec, fails) end
  if slows > 0 then redis.call('HINCRBY', BK, 's:' .. sec, slows) end
end
redis.call('ZADD', IK, now, instance)
if ARGV[20] == '1' then redis.call('ZADD', FK, now, instance) end
local horizon = '(' .. int(now - WINDOW * 1000)
redis.call('ZREMRANGEBYSCORE', IK, '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', FK, '-inf', horizon)
local c, f, s = window()
if st == 'closed' and c > 0 and c >= MIN_CALLS then
  local trip = f * 100 >= FAIL_RATE * c or (SLOW_RATE >= 0 and s * 100 >= SLOW_RATE * c)
  local nf, ni = redis.call('ZCARD', FK), redis.call('ZCARD', IK)
  if trip and nf >= Q_MIN and nf * 100 >= Q_PCT * ni then
    trips = 0
    open()
  end
end
save()
return reply()
