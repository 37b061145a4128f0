-- A fenced ledger write. KEYS: lock, ledger, audit.
-- ARGV: token, max audit entries, n rows, (version, row json) * n, n deletes, version * n,
-- then audit entries (json), one per remaining argument.
-- Returns 1, or 0 when the lease is no longer current (nothing written).
local lock, ledger, audit = KEYS[1], KEYS[2], KEYS[3]
if not is_current(lock, tonumber(ARGV[1]), now_us()) then return 0 end
local max_audit = tonumber(ARGV[2])
local i = 3
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', ledger, ARGV[i], ARGV[i + 1]); i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', ledger, ARGV[i]); i = i + 1
end
while i <= #ARGV do
  redis.call('RPUSH', audit, ARGV[i]); i = i + 1
end
redis.call('LTRIM', audit, -max_audit, -1)
return 1
