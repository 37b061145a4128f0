-- Live ids of one namespace: one ZCOUNT over the ids not yet expired (server time).
-- KEYS[1] the namespace's id set.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
