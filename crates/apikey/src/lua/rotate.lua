-- KeyRecord::rotate + insert of the successor, atomically (both keys share the family's
-- hash tag). KEYS[1]: old record, KEYS[2]: new record. ARGV[1]: now, ARGV[2]: grace end,
-- ARGV[3]: new id, ARGV[4..]: the new record's fields and values.
-- Returns {'ok', old record...} or {'taken'}, {'not_found'}, {<status>}.
if redis.call('EXISTS', KEYS[2]) == 1 then return {'taken'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
local s = status_at(KEYS[1], tonumber(ARGV[1]))
if s ~= 'active' then return {s} end
redis.call('HSET', KEYS[1], 'st', 'rotating', 'gu', ARGV[2], 'rt', ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
local r = redis.call('HGETALL', KEYS[1])
table.insert(r, 1, 'ok')
return r
