-- reset: forget every key of one subject (all share one hash tag).
if #KEYS > 0 then redis.call('DEL', unpack(KEYS)) end
return 1
