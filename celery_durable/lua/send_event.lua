-- send_event.lua: deliver an event payload to a key: buffer it (FIFO) and name the runs
-- waiting on the key, which the sender then wakes. Each payload is taken by one wait.
-- KEYS[1] mailbox list   P event:{<key>}:mailbox
-- KEYS[2] waiters zset   P event:{<key>}:waiters
-- KEYS[3] taken hash     P event:{<key>}:taken
-- ARGV[1] payload (JSON)  ARGV[2] TTL (ms) of these keys
-- Returns the ids of the runs waiting on the key.
redis.call('RPUSH', KEYS[1], ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return redis.call('ZRANGE', KEYS[2], 0, -1)
