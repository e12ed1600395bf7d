-- wait_event.lua: a run's wait for an event on a key: take a buffered payload, or register
-- as a waiter (with its deadline), or report that the deadline has passed.
-- The payload taken by (run, position) is remembered, so a wait that crashed before its
-- step was committed gets the same payload again.
-- KEYS[1] mailbox list   P event:{<key>}:mailbox   payloads sent and not yet taken (FIFO)
-- KEYS[2] waiters zset   P event:{<key>}:waiters   run id -> deadline (ms; +inf: none)
-- KEYS[3] taken hash     P event:{<key>}:taken     "<run id>:<position>" -> payload
-- ARGV[1] run id  ARGV[2] step position  ARGV[3] now_ms  ARGV[4] deadline (ms, or 'inf')
-- ARGV[5] TTL (ms) of these keys
-- Returns {1, payload} (an event), {0, deadline} (waiting), {2, deadline} (timed out).
local slot = ARGV[1] .. ':' .. ARGV[2]
local taken = redis.call('HGET', KEYS[3], slot)
local reply
if taken then
  reply = {1, taken}
else
  local payload = redis.call('LPOP', KEYS[1])
  if payload then
    redis.call('HSET', KEYS[3], slot, payload)
    redis.call('ZREM', KEYS[2], ARGV[1])
    reply = {1, payload}
  else
    redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[1])
    local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
    if deadline ~= 'inf' and tonumber(deadline) <= tonumber(ARGV[3]) then
      redis.call('ZREM', KEYS[2], ARGV[1])
      reply = {2, deadline}
    else
      reply = {0, deadline}
    end
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return reply
