
-- acquire: check every quota, consume from all only when all admit.
begin(KEYS, ARGV)
local quotas, states, out = {}, {}, { 0 }
local all = true
for i = 1, n do
  quotas[i] = quota(i)
  states[i] = load(quotas[i])
  local ok, remaining, reset, retry = check(quotas[i], states[i], cost)
  if not ok then all = false end
  local flag = 0
  if ok then flag = 1 end
  out[#out + 1] = flag
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if all then
  out[1] = 1
  for i = 1, n do consume(quotas[i], states[i], cost) end
else
  -- Nothing was consumed: quotas that would have admitted report what they still have.
  for i = 1, n do
    local b = 1 + (i - 1) * 4
    if out[b + 1] == 1 then
      local _, remaining, reset = check(quotas[i], states[i], 0)
      out[b + 2] = remaining
      out[b + 3] = reset
    end
  end
end
return out
