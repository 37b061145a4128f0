
-- release (src/lease.rs `release`): give back units of a lease granted at `granted_at`
-- that were never spent, to the quotas whose window is still the one of the grant. Window
-- algorithms only: a bucket that refilled meanwhile would take them above what it allows.
-- ARGV after the quotas: granted_at.
local granted_at = tonumber(ARGV[4 + 4 * n + 1])
local code = ARGV[2]
if cost > 0 and (code == 'fw' or code == 'swc') then
  for i = 1, n do
    local q = quota(i)
    if idiv(now, q.p) == idiv(granted_at, q.p) then refund(q, load(q), cost) end
  end
end
return 1
