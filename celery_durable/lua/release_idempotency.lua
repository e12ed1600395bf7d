-- release_idempotency.lua: free an idempotency key, but only if it still maps to this run
-- (after a TTL expiry the key may already name a newer run).
-- KEYS[1] idempotency key   P idem:<task name>:<key>
-- ARGV[1] run id ('' releases whatever run the key names)
-- Returns 1 if the key was deleted, 0 otherwise.
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if ARGV[1] ~= '' and cjson.decode(current)['run'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
