
-- lease (src/lease.rs `lease`): count a request of `cost` units, paid first with the units
-- the instance holds when they are still valid, then lease up to `want` more, at most
-- share/1000 of what each quota has left, taken from every quota. Stale held units are
-- given back first, as release.lua does. ARGV after the quotas: held, held_at, want,
-- lifetime_us, share_permille, owner, kept, kept_at, grace_us, report, held_lifetime_us,
-- held_reclaim_at (from then on held units may have gone back with the owner's reclaimed
-- record: they count for nothing, neither towards the cost nor back into the quota, as a
-- late give-back in release.lua), lost_from, lost_to (the reports of the owner's calls for
-- the key it gave up on since its last answer, 0: none; ledger.lua `settle_lost`)
-- (buckets count held units within the longer of the two lifetimes of held_at; ledger.lua: the records of
-- owners whose TTL passed are reclaimed first; what the owner holds afterwards, the held
-- units it kept back and did not offer included, is recorded with a TTL of the lease's
-- lifetime plus the grace; an owner without a record, its record reclaimed, is recorded
-- with this call's grant alone).
-- Reply: admitted, used_held, stale_held, granted, lifetime_us, granted_at, then per quota
-- allowed, remaining, reset, retry (-1 for none).
begin(KEYS, ARGV)
begin_ledger()
local b = 4 + 4 * n
local held, held_at = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
local want, lifetime, share = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
local owner, kept, kept_at = ARGV[b + 6] or '0', num(ARGV[b + 7], 0), num(ARGV[b + 8], 0)
local grace, report = num(ARGV[b + 9], 0), num(ARGV[b + 10], 0)
local held_life = math.max(lifetime, num(ARGV[b + 11], 0))
local held_reclaim_at = num(ARGV[b + 12], 0)
local lost_from, lost_to = num(ARGV[b + 13], 0), num(ARGV[b + 14], 0)

-- Every state this call writes is written once, before the ledger (common.lua
-- `hold_saves`), in the order the call first wrote them.
hold_saves()
read_all(owner)
reclaim(owner)
if not settle_lost(owner, report, lost_from, lost_to) then want = 0 end
local quotas = {}
for i = 1, n do quotas[i] = quota(i) end

local function held_valid()
  if buckets then return now - held_at <= held_life end
  if windows then
    for i = 1, n do
      if idiv(now, quotas[i].p) ~= idiv(held_at, quotas[i].p) then return false end
    end
    return true
  end
  return false
end

local usable, stale = 0, 0
if held > 0 and cost > 0 then
  if owner ~= '0' and held_reclaim_at > 0 and now >= held_reclaim_at then
    stale = 1
  elseif held_valid() then
    usable = math.min(held, cost)
  else
    stale = 1
    if windows then
      for i = 1, n do
        local q = quotas[i]
        if idiv(now, q.p) == idiv(held_at, q.p) then refund(q, load(q), held) end
      end
    end
  end
end
local need = cost - usable

local states, out = {}, { 0, 0, stale, 0, 0, now }
local all = true
for i = 1, n do
  states[i] = load(quotas[i])
  local ok, remaining, reset, retry = check(quotas[i], states[i], need)
  if not ok then all = false end
  local flag = 0
  if ok then flag = 1 end
  out[#out + 1] = flag
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if not all then
  -- Nothing is taken: quotas that would have admitted report what they still have.
  for i = 1, n do
    local v = 6 + (i - 1) * 4
    if out[v + 1] == 1 then
      local _, remaining, reset = check(quotas[i], states[i], 0)
      out[v + 2] = remaining
      out[v + 3] = reset
    end
  end
  -- Nothing taken: stale held units are gone, the rest is the owner's again.
  local mine = kept
  local at = kept_at
  local delta = 0
  if stale == 1 then delta = -held end
  if stale == 0 and held > 0 then
    mine = mine + held
    if kept == 0 or held_at < at then at = held_at end
  end
  flush_saves()
  record(owner, report, mine, delta, at, nil)
  return out
end
if need > 0 then
  for i = 1, n do consume(quotas[i], states[i], need) end
  for i = 1, n do states[i] = load(quotas[i]) end
end
local grant = 0
if buckets or windows then grant = want end
for i = 1, n do
  local _, left = check(quotas[i], states[i], 0)
  local cap = idiv(left * share, 1000)
  if cap < grant then grant = cap end
end
if grant > 0 then
  for i = 1, n do
    if not check(quotas[i], states[i], grant) then grant = 0 end
  end
end
if grant > 0 then
  for i = 1, n do consume(quotas[i], states[i], grant) end
  for i = 1, n do states[i] = load(quotas[i]) end
end
for i = 1, n do
  local _, remaining, reset = check(quotas[i], states[i], 0)
  local v = 6 + (i - 1) * 4
  out[v + 1] = 1
  out[v + 2] = remaining
  out[v + 3] = reset
  out[v + 4] = -1
end
local life = 0
if grant > 0 then
  life = lifetime
  if windows then
    for i = 1, n do
      local p = quotas[i].p
      local left = (idiv(now, p) + 1) * p - now
      if left < life then life = left end
    end
  end
end
local mine, at = kept, kept_at
local delta = grant - usable
if stale == 1 then delta = grant - held end
if stale == 0 and held - usable > 0 then
  if mine == 0 or held_at < at then at = held_at end
  mine = mine + held - usable
end
local ends = nil
if grant > 0 then
  if mine == 0 then at = now end
  mine = mine + grant
  ends = now + life + grace
end
flush_saves()
record(owner, report, mine, delta, at, ends, grant)
out[1] = 1
out[2] = usable
out[4] = grant
out[5] = life
return out
