-- release (src/lease.rs `release`): give back units of a lease granted at `granted_at`
-- that were never spent. Without an owner (or owner '0'): window algorithms only, to the
-- quotas whose window is still the one of the grant. With an owner (ledger.lua): only while
-- the owner's record stands (a record already reclaimed gave these units back), buckets
-- included, less what they refilled since the grant; the record shrinks by the units.
-- A give-back that arrives once the units may have been reclaimed with the owner's record
-- (`reclaim_at`: the grant plus the lease's lifetime plus the grace, as lease.lua sets the
-- record's end) gives nothing: a record found then may be a newer one, written after the
-- reclaim gave these units back, and counting them again would admit them twice.
-- ARGV after the quotas: granted_at, owner, reported (the owner's last report before the
-- units left its hands), reclaim_at (0: none).
begin(KEYS, ARGV)
begin_ledger()
local granted_at = tonumber(ARGV[4 + 4 * n + 1])
local owner = ARGV[4 + 4 * n + 2] or '0'
local reported = num(ARGV[4 + 4 * n + 3], 0)
local reclaim_at = num(ARGV[4 + 4 * n + 4], 0)
read_all(owner)
reclaim(owner)
if cost > 0 then
  if owner == '0' or not ledger then
    if windows then
      for i = 1, n do
        local q = quota(i)
        if idiv(now, q.p) == idiv(granted_at, q.p) then refund(q, load(q), cost) end
      end
    end
  else
    local raw = look(owner).raw
    if raw and (reclaim_at == 0 or now < reclaim_at) then
      give(cost, granted_at)
      -- A record written by a report sent after these units left the owner's hands left
      -- them out already.
      local units, at, ends, seq, last, last_at = split6(raw)
      if seq <= reported then put(owner, units - cost, at, ends, seq, last, last_at) end
    end
  end
end
return 1
