-- Delete at most ARGV[3] entries of a tenant, namespace after namespace.
-- KEYS[1] the tenant's namespace set. ARGV[1] entry key prefix, ARGV[2] namespace set key
-- prefix, ARGV[3] batch.
-- Returns {namespaces left, ids of the deleted entries}; the caller calls again while
-- namespaces are left. Every namespace visited costs at least one unit of the batch.
local budget = tonumber(ARGV[3])
local removed = {}
while budget > 0 do
  local first = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #first == 0 then break end
  local set = ARGV[2] .. first[1]
  local ids = redis.call('ZRANGE', set, 0, budget - 1)
  for _, id in ipairs(ids) do
    if redis.call('DEL', ARGV[1] .. id) == 1 then removed[#removed + 1] = id end
  end
  if #ids > 0 then redis.call('ZREM', set, unpack(ids)) end
  budget = budget - math.max(#ids, 1)
  if redis.call('ZCARD', set) == 0 then
    redis.call('DEL', set)
    redis.call('ZREM', KEYS[1], first[1])
  end
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[1]) end
return {left, removed}
