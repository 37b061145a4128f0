-- SharedMachine::complete_probe. ARGV[16..18]: generation, lease id, outcome.
-- Only a live lease of the current half-open period counts.
local req_gen, lease, outcome = tonumber(ARGV[16]), ARGV[17], ARGV[18]
advance()
local expiry = tonumber(redis.call('ZSCORE', LK, lease))
redis.call('ZREM', LK, lease)
if expiry ~= nil and expiry > now and st == 'half_open' and gen == req_gen then
  if outcome == 'failure' then
    open()
  elseif outcome == 'success' then
    succ = succ + 1
    if succ >= SUCC_NEEDED then close() end
  end
end
save()
return reply()
