-- claim_idempotency.lua: map an idempotency key to exactly one run.
-- KEYS[1] idempotency key   P idem:<task name>:<key>   (a string: JSON {"run", "fp", "ms"})
-- ARGV[1] candidate run id  ARGV[2] fingerprint of the call's arguments  ARGV[3] now_ms
-- ARGV[4] TTL (ms)
-- Returns {1, value} if the candidate now owns the key, {0, value} if another run owns it.
local current = redis.call('GET', KEYS[1])
if current then return {0, current} end
local value = cjson.encode({run = ARGV[1], fp = ARGV[2], ms = tonumber(ARGV[3])})
redis.call('SET', KEYS[1], value, 'PX', ARGV[4])
return {1, value}
