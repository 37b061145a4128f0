-- ledger (lease.lua, release.lua): the leases each instance holds for this key, so that
-- what an instance killed with a lease out did not spend comes back after the lease's TTL.
-- KEYS[n + 1] is a hash: field = the owner (a LeasedStore's id), value
-- 'units:at:ends:seq:granted:granted_at' (units the owner reported holding, the store time
-- the oldest of them was granted, the store time after which they are reclaimed, the
-- owner's last report, and what the call of that report granted and when: given back if
-- the owner says it lost that call's reply, `settle_lost`), plus 'due' = the earliest
-- 'ends', and 'exp' = the store time (µs) until which the ledger's TTL was last set, so that
-- the TTL is extended only when it must be. Owner '0' keeps no record (strict mode): nothing
-- is reclaimed. A call reads the ledger once (`look`: the owner's record, 'due', 'exp') and
-- writes it at most once (one HSET), not at all when nothing moved.

-- Set by `begin_ledger`, after `begin`.
local ledger, windows, buckets

-- From now on, a state written several times by this call is written to Redis once, with its
-- last value and TTL, by `flush_saves` (what a reader sees after the call is the same: no
-- other command runs in between, and this call reads its own writes from `states_seen`).
local function hold_saves()
  if held_saves == nil then held_saves, held_order = {}, {} end
end

-- Write what `hold_saves` kept back; later saves are written at once again.
local function flush_saves()
  if held_saves == nil then return end
  local saves, order = held_saves, held_order
  held_saves, held_order = nil, nil
  for _, key in ipairs(order) do
    local s = saves[key]
    redis.call('SET', key, s[1], 'PX', s[2])
  end
end

-- A record's numbers (records written before the last two were kept have none: 0). Six
-- numbers are read with one match: `gmatch` (an iterator, a closure and a table per
-- record) cost a renewal ~19k instructions more; anything else (an older record of four
-- numbers) is read by `gmatch` as before.
local function split6(raw)
  local a, b, c, d, e, f = string.match(raw, '^([^:]+):([^:]+):([^:]+):([^:]+):([^:]+):([^:]+)$')
  if a then
    a, b, c, d, e, f = tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e), tonumber(f)
    if a and b and c and d and e and f then return a, b, c, d, e, f end
  end
  local out = {}
  for part in string.gmatch(raw, '[^:]+') do out[#out + 1] = tonumber(part) end
  return out[1] or 0, out[2] or 0, out[3] or 0, out[4] or 0, out[5] or 0, out[6] or 0
end

-- One string.format of six integers costs less than six `fmt` and ten concatenations;
-- the same text (`fmt` writes an integer below 2^53 with '%d'). Anything else (never
-- seen: records hold counts and store times) takes `fmt`.
local function whole(x) return x % 1 == 0 and x < 9007199254740992 and x > -9007199254740992 end
local function entry(units, at, ends, seq, granted, granted_at)
  units = max0(units)
  if whole(units) and whole(at) and whole(ends) and whole(seq) and whole(granted)
    and whole(granted_at) then
    return string.format('%d:%d:%d:%d:%d:%d', units, at, ends, seq, granted, granted_at)
  end
  return fmt(units) .. ':' .. fmt(at) .. ':' .. fmt(ends) .. ':' .. fmt(seq) .. ':'
    .. fmt(granted) .. ':' .. fmt(granted_at)
end

local function put(owner, units, at, ends, seq, granted, granted_at)
  local value = entry(units, at, ends, seq, granted, granted_at)
  redis.call('HSET', ledger, owner, value)
  return value
end

-- What this call knows of the ledger: the owner's record (false: none), 'due', 'exp' (nil:
-- absent), read with one HMGET and kept up to date by this call's own writes.
local seen
local function look(owner)
  if seen == nil then
    local r = redis.call('HMGET', ledger, owner, 'due', 'exp')
    seen = { raw = r[1], due = tonumber(r[2]), exp = tonumber(r[3]) }
  end
  return seen
end

-- Read every key the call may write (the ledger, each quota's string state) before it
-- writes any: a key of the wrong type (a corrupted key) then fails the call before it
-- changed anything, so that a call, and each item of a batch (batch.lua), is all or
-- nothing. Before, a lease could reclaim a dead owner's record into the first quota, then
-- fail on the second's key: the first quota's refund stayed, and so did the record, whose
-- units a later reclaim gave back again. The reads are cached (`look`, `load_numbers`): a
-- lease call, which reads them all anyway, sends no extra command.
local function read_all(owner)
  if ledger then look(owner) end
  if windows or buckets then
    for i = 1, n do load_numbers(quota(i)) end
  end
end

-- Give back `units` granted at store time `at` that were never spent: to the windows still
-- the grant's (units of a past window belong to it); to a bucket less what it refilled
-- since the grant (the bucket may have been full meanwhile: what it refilled then was
-- lost anyway, so giving that back would admit more than the bucket allows).
local function give(units, at)
  if units <= 0 then return end
  for i = 1, n do
    local q = quota(i)
    if windows then
      if idiv(now, q.p) == idiv(at, q.p) then refund(q, load(q), units) end
    elseif buckets then
      local back = units - math.ceil(max0(now - at) / q.t)
      if back > 0 then refund(q, load(q), back) end
    end
  end
end

-- Reclaim the records whose TTL passed: their owners stopped spending them (a live owner
-- gives its leases back before; one that did not is taken for dead). `owner`: the call's
-- owner, whose record `look` reads along with 'due'.
local function reclaim(owner)
  if not ledger then return end
  local s = look(owner)
  if s.due == nil or s.due > now then return end
  local all = redis.call('HGETALL', ledger)
  local next_due = nil
  local gone = {}
  for j = 1, #all, 2 do
    local f = all[j]
    if f ~= 'due' and f ~= 'exp' then
      local units, at, ends = split6(all[j + 1])
      if ends <= now then
        give(units, at)
        gone[#gone + 1] = f
        if f == owner then s.raw = false end
      elseif next_due == nil or ends < next_due then
        next_due = ends
      end
    end
  end
  if next_due then
    if #gone > 0 then redis.call('HDEL', ledger, unpack(gone)) end
    redis.call('HSET', ledger, 'due', fmt(next_due))
    s.due = next_due
  else
    redis.call('DEL', ledger)
    s.raw, s.due, s.exp = false, nil, nil
  end
end

-- A lease call of `owner`'s that failed after it reached the store (its reply lost, or
-- given up on: the owner's next calls name the reports it gave up on since its last
-- answer, `lost_from`..`lost_to`, until one is answered): nobody holds what it granted.
-- When such a call made the record's last report, that grant goes back now (windows still
-- the grant's; buckets less what they refilled since) and leaves the record. Before, the
-- owner's next report replaced the record without those units and they stayed counted,
-- held by nobody, until the window ended. Returns whether a call of report `report` may
-- lease: not when the record holds a later report (the owner sends its reporting calls one
-- at a time, so it gave up on this one: a grant would be lost again).
local function settle_lost(owner, report, lost_from, lost_to)
  if not ledger or owner == '0' then return true end
  local s = look(owner)
  if not s.raw then return true end
  local units, at, ends, seq, last, last_at = split6(s.raw)
  if lost_from > 0 and seq >= lost_from and seq <= lost_to and last > 0 then
    give(last, last_at)
    s.raw = put(owner, units - last, at, ends, seq, 0, 0)
  end
  return report == 0 or report >= seq
end

-- Record what `owner` holds after this call. With a report number (newer than the
-- record's), the record becomes `snapshot`: everything the owner held when it sent the
-- call, after the call (what it spends meanwhile is not in it). Without one (another call
-- of the owner's was in flight, or a later report landed first), the record moves by
-- `delta`: what this call granted less what it took from the owner's units. A record is
-- created only with a grant (`granted` units, ending at `ends_if_granted`), and then holds
-- that grant alone: an owner reporting units the store has no record of had them
-- reclaimed (a report that lands more than the grace late, after the reclaim gave its
-- units back, must not record them again, or a second reclaim gives them back twice).
-- Only reclaim removes records, so that a give-back that finds none knows its units were
-- reclaimed.
local function record(owner, report, snapshot, delta, at, ends_if_granted, granted)
  if not ledger or owner == '0' then return end
  local s = look(owner)
  local raw = s.raw
  if not raw and ends_if_granted == nil then return end
  local existed = raw or s.due ~= nil
  local units, old_at, ends, seq, last, last_at = 0, at, 0, 0, 0, 0
  if raw then units, old_at, ends, seq, last, last_at = split6(raw) end
  if ends_if_granted and ends_if_granted > ends then ends = ends_if_granted end
  if not raw then
    units, at = granted, now
    if report > seq then seq, last, last_at = report, granted, now end
  elseif report > seq then
    units, seq, last, last_at = snapshot, report, granted or 0, now
  else
    units = max0(units + delta)
    if at == 0 or (old_at > 0 and old_at < at) then at = old_at end
  end
  -- At most three fields: made that large at once, not grown twice.
  local fields = { nil, nil, nil, nil, nil, nil }
  local value = entry(units, at, ends, seq, last, last_at)
  if value ~= raw then
    fields[1], fields[2] = owner, value
    s.raw = value
  end
  if s.due == nil or ends < s.due then
    fields[#fields + 1], fields[#fields + 2] = 'due', fmt(ends)
    s.due = ends
  end
  -- The ledger lives at least as long as the counters it accounts for: a record that
  -- vanished with its key before they did would strand its units in them (until the
  -- window ends), and a live owner's give-back that finds no record gives nothing back.
  -- When it must grow, its TTL is set to twice that ('exp' says until when), so a key
  -- decided steadily extends it about once per TTL, not on every call.
  local keep = math.ceil((ends - now) / 1000) + 1000
  for i = 1, n do
    local q = quota(i)
    local t = ttl_ms(q)
    if t > keep then keep = t end
  end
  local exp = s.exp
  if exp == nil and existed then
    -- A ledger written before 'exp' was kept: its TTL as Redis has it.
    local left = redis.call('PTTL', ledger)
    if left > 0 then exp = now + left * 1000 end
  end
  local extend = exp == nil or exp < now + keep * 1000
  if extend then
    s.exp = now + 2 * keep * 1000
    fields[#fields + 1], fields[#fields + 2] = 'exp', fmt(s.exp)
  end
  if #fields > 0 then redis.call('HSET', ledger, unpack(fields)) end
  if extend then redis.call('PEXPIRE', ledger, 2 * keep) end
end

-- Start a lease or release call's ledger (second line of those operations, after `begin`):
-- its key, the algorithm's kind, nothing read yet.
local function begin_ledger()
  ledger = call_keys[n + 1]
  local code = call_argv[2]
  windows = code == 'fw' or code == 'swc'
  buckets = code == 'gcra' or code == 'tb'
  seen = nil
end
