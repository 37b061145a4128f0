-- Store one entry and track it, trimming expired ids as it goes.
-- KEYS[1] the entry, KEYS[2] its namespace's id set, KEYS[3] the tenant's namespace set,
-- KEYS[4..] the id sets of its tags (every key shares the tenant's hash tag).
-- ARGV[1] the entry (JSON), ARGV[2] TTL (ms), ARGV[3] id, ARGV[4] namespace (encoded),
-- ARGV[5] most expired members dropped per set per call.
-- Sets are sorted sets scored by expiry (server time, ms): a member is dropped once its
-- entry has expired, by the next insert into that set, at most ARGV[5] at a time (more
-- than one insert adds), so a set holds live ids plus a bounded backlog.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local expires = now + ttl
local trim = tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
local function track(key, member)
  local old = redis.call('ZRANGE', key, '-inf', now, 'BYSCORE', 'LIMIT', 0, trim)
  if #old > 0 then redis.call('ZREM', key, unpack(old)) end
  redis.call('ZADD', key, 'GT', expires, member)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
track(KEYS[2], ARGV[3])
track(KEYS[3], ARGV[4])
for i = 4, #KEYS do track(KEYS[i], ARGV[3]) end
return 1
