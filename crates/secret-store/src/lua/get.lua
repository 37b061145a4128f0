-- Read one version of a secret: the latest when ARGV[1] is empty.
-- KEYS[1]  the secret's hash: field `latest` = newest committed version, field `<n>` = sealed blob.
-- Returns {version, blob}, or nil when the secret or version does not exist.
local v = ARGV[1]
if v == '' then
  v = redis.call('HGET', KEYS[1], 'latest')
  if not v then return nil end
end
local blob = redis.call('HGET', KEYS[1], v)
if not blob then return nil end
return {v, blob}
