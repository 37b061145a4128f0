-- batch: the lease and release calls of many keys of one algorithm in one script call
-- (src/redis.rs `lease_many` / `release_many`: one such script per algorithm). `ops` holds
-- the algorithm's two operations as functions of KEYS and ARGV, each the operation of the
-- single-key script (lease.lua or release.lua) over the prelude, the algorithm and
-- ledger.lua, which the batch defines once for all its items (each operation begins its
-- call with its own KEYS and ARGV: common.lua `begin`), so a batch does for each key
-- exactly what that key's own call would.
-- ARGV[1]: the number of items; then one string per item, MessagePack (src/redis.rs
-- `batch_item`): the item format 'pb2', the item's name ('<algorithm code>:lease' or
-- ':release') and an array of what its own script call's ARGV would hold, numbers as
-- integers and the algorithm code and owner as strings. Redis makes one string per argument
-- and the single-key scripts parse each number with `tonumber` (glibc `strtod`): one packed
-- string per item, unpacked by cmsgpack into numbers, costs Redis less than the 25
-- arguments (one quota) an item was before.
-- KEYS: every item's keys (its quotas' state keys, then its ledger: quota count + 1), one
-- item after another (on Redis Cluster all in one slot: the caller groups items by slot).
-- Reply: per item, the operation's reply, or {'error', message} for an item that failed
-- (the other items still ran; an error reply inside the array would fail the whole call in
-- clients). An item that fails changed nothing: the operations read every key they write
-- before writing any (ledger.lua `read_all`), and a key of the wrong type fails that read.
-- An item that is not of this format (a process of an older version, which sent each
-- number as an argument) fails with an error saying so, and so does every item after it:
-- where their keys start is unknown then, and guessing would run an item on another's keys.
-- Items whose time is 0 (read Redis' TIME) all get the time the batch began: one TIME
-- per batch, not one per item (the batch is atomic: no other call runs in between).
local items = tonumber(ARGV[1])
local k = 1
local replies = {}
local batch_now = nil
local unreadable = nil
local key_count = #KEYS
for item = 1, items do
  local blob = ARGV[item + 1]
  local keys, args, op = nil, nil, nil
  if unreadable == nil then
    local ok, format, name, a = pcall(cmsgpack.unpack, blob or '')
    -- The item's quota count: its keys are that many states and a ledger.
    local nq = ok and format == 'pb2' and type(a) == 'table' and a[4]
    if type(nq) ~= 'number' or nq < 0 or nq ~= math.floor(nq) or k + nq > key_count then
      unreadable = 'batch item ' .. item .. ' is not of item format pb2 (a client of another'
        .. ' palisade-ratelimit version?): it and the items after it were not run'
    else
      args = a
      local nk = nq + 1
      -- Built whole (one allocation), not grown one key at a time (unpack's stack is
      -- bounded: a longer item is copied key by key).
      if nk <= 200 then
        keys = { unpack(KEYS, k, k + nk - 1) }
      else
        keys = {}
        for i = 1, nk do keys[i] = KEYS[k + i - 1] end
      end
      k = k + nk
      op = ops[name]
      if op == nil then
        replies[item] = { 'error', 'unknown batch operation ' .. tostring(name) }
      end
    end
  end
  if unreadable then
    replies[item] = { 'error', unreadable }
  elseif op then
    if args[1] == 0 then
      if batch_now == nil then
        local t = redis.call('TIME')
        batch_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
      end
      args[1] = batch_now
    end
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
