-- batch: the lease and release calls of many keys of one algorithm in one script call
-- (src/redis.rs `lease_many` / `release_many`: one such script per algorithm). `ops` holds
-- the algorithm's two operations as functions of KEYS and ARGV, each the operation of the
-- single-key script (lease.lua or release.lua) over the prelude, the algorithm and
-- ledger.lua, which the batch defines once for all its items (each operation begins its
-- call with its own KEYS and ARGV: common.lua `begin`), so a batch does for each key
-- exactly what that key's own call would. ARGV[1]: the number of items; then per item its name
-- ('<algorithm code>:lease' or ':release'), its number of keys, its number of arguments
-- and those arguments; KEYS: every item's keys, one item after another (on Redis Cluster
-- all in one slot: the caller groups items by slot).
-- Reply: per item, the operation's reply, or {'error', message} for an item that failed
-- (the other items still ran; an error reply inside the array would fail the whole call in
-- clients). An item that fails changed nothing: the operations read every key they write
-- before writing any (ledger.lua `read_all`), and a key of the wrong type fails that read.
-- Items whose time is '0' (read Redis' TIME) all get the time the batch began: one TIME
-- per batch, not one per item (the batch is atomic: no other call runs in between).
local items = tonumber(ARGV[1])
local p, k = 2, 1
local replies = {}
local batch_now = nil
for item = 1, items do
  local name = ARGV[p]
  local nk, na = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  -- Built whole (one allocation each), not grown one element at a time (unpack's stack
  -- is bounded: a longer item is copied element by element).
  local keys, args
  if nk <= 200 and na <= 200 then
    keys = { unpack(KEYS, k, k + nk - 1) }
    args = { unpack(ARGV, p + 3, p + 2 + na) }
  else
    keys, args = {}, {}
    for i = 1, nk do keys[i] = KEYS[k + i - 1] end
    for i = 1, na do args[i] = ARGV[p + 2 + i] end
  end
  if args[1] == '0' then
    if batch_now == nil then
      local t = redis.call('TIME')
      -- A number, not its text: each item's common.lua takes it as it is (no parse).
      batch_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    args[1] = batch_now
  end
  p = p + 3 + na
  k = k + nk
  local op = ops[name]
  if op == nil then
    replies[item] = { 'error', 'unknown batch operation ' .. tostring(name) }
  else
    local ok, reply = pcall(op, keys, args)
    if ok then
      replies[item] = reply
    else
      if type(reply) == 'table' and reply.err then reply = reply.err end
      replies[item] = { 'error', tostring(reply) }
    end
  end
end
return replies
