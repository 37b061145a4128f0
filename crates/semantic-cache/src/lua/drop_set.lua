-- Delete at most ARGV[2] entries of one id set (a namespace or a tag) and forget them.
-- KEYS[1] the id set; KEYS[2] (namespaces only) the tenant's namespace set, left once the
-- namespace is empty. ARGV[1] entry key prefix, ARGV[2] batch, ARGV[3] namespace (encoded).
-- Returns {ids left in the set, ids of the deleted entries}; the caller calls again while
-- ids are left, so no call does more than one batch of work.
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local removed = {}
for _, id in ipairs(ids) do
  if redis.call('DEL', ARGV[1] .. id) == 1 then removed[#removed + 1] = id end
end
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[1])
  if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[3]) end
end
return {left, removed}
