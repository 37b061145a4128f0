-- One migration step on a standalone Redis, atomically: fence, the migration's commands,
-- the ledger write. KEYS: lock, ledger, audit, then the migration's declared keys.
-- ARGV: token, ttl (ms), max audit entries, version, row json ('' to delete the row),
-- audit json, then the commands: n, (argc, arg * argc) * n.
-- Returns {'ok'}, {'lost'} or {'fail', message}. Redis has no rollback: commands before a
-- failing one keep their effect (the migrator restores the declared keys' backup).
local lock, ledger, audit = KEYS[1], KEYS[2], KEYS[3]
local token, ttl, max_audit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
if not is_current(lock, token, now) then return {'lost'} end
redis.call('HSET', lock, 'expires_at', int(now + ttl * 1000))
local ok, err = pcall(function()
  local i = 8
  for _ = 1, tonumber(ARGV[7]) do
    local argc = tonumber(ARGV[i])
    local args = {}
    for j = 1, argc do args[j] = ARGV[i + j] end
    redis.call(unpack(args))
    i = i + argc + 1
  end
end)
if not ok then
  if type(err) == 'table' then err = err.err end
  return {'fail', tostring(err)}
end
if ARGV[5] == '' then redis.call('HDEL', ledger, ARGV[4]) else redis.call('HSET', ledger, ARGV[4], ARGV[5]) end
redis.call('RPUSH', audit, ARGV[6])
redis.call('LTRIM', audit, -max_audit, -1)
return {'ok'}
