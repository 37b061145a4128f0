
-- peek: what a request of cost 1 would get; writes nothing.
begin(KEYS, ARGV)
local out = { 1 }
for i = 1, n do
  local q = quota(i)
  local ok, remaining, reset, retry = check(q, load(q), 1)
  local flag = 0
  if ok then flag = 1; remaining = remaining + 1 else out[1] = 0 end
  out[#out + 1] = flag
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
