-- SharedMachine::apply. ARGV[16]: the manual operation.
local op = ARGV[16]
if op == 'force_open' then go('forced_open', 0)
elseif op == 'close' then local k = trips; close(); trips = k
elseif op == 'reset' then close()
elseif op == 'disable' then go('disabled', 0)
elseif op == 'metrics_only' then go('metrics_only', 0)
else return redis.error_reply('unknown circuit breaker operation') end
save()
return reply()
