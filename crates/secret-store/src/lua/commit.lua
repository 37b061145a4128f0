-- Store version ARGV[1] (reserved earlier with HINCRBY `next`) as blob ARGV[2], make it the
-- latest unless a newer version was committed meanwhile, and forget version ARGV[1] - ARGV[3]
-- (so at most ARGV[3] versions stay readable).
-- KEYS[1]  the secret's hash.
local n = tonumber(ARGV[1])
local keep = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local latest = tonumber(redis.call('HGET', KEYS[1], 'latest') or '0')
if n > latest then redis.call('HSET', KEYS[1], 'latest', ARGV[1]) end
local old = n - keep
if old >= 1 then redis.call('HDEL', KEYS[1], tostring(old)) end
return n
