-- slots.lua: a cluster-wide concurrency limit: at most `limit` runs hold a slot; the others
-- wait in FIFO order and are handed a slot as soon as one frees up (no polling).
-- Slots are leases: a holder that is not renewed (its worker died) expires, and a run that
-- was handed a slot but never started within the TTL goes back to the head of the queue.
-- KEYS[1] config hash   P limit:{<base>}:config   (field "limit" overrides the default)
-- KEYS[2] holders zset  P limit:{<base>}:<sub>:holders   run id -> lease expiry (ms)
-- KEYS[3] parked zset   P limit:{<base>}:<sub>:parked    run id -> queue order
-- KEYS[4] woken zset    P limit:{<base>}:<sub>:woken     run id -> hand-over expiry (ms)
-- KEYS[5] info hash     P limit:{<base>}:<sub>:info      run id -> JSON to re-publish it
-- KEYS[6] fair hash     P limit:{<base>}:<sub>:fair      the queue's bookkeeping
--                       (_waiting.lua): virtual time, fairness keys, ranks
-- ARGV[1] op: 'acquire' | 'release' | 'sweep'   ARGV[2] run id ('' for sweep)
-- ARGV[3] now_ms  ARGV[4] lease TTL (ms)  ARGV[5] default limit  ARGV[6] info JSON (acquire)
-- ARGV[7] hand-over TTL (ms)  ARGV[8] TTL (ms) of these keys when idle
-- ARGV[9] priority rank (acquire; >= 0, higher goes first)  ARGV[10] fairness key ('' none)
-- ARGV[11] priority step: waiting runs a run of rank r may overtake = r x step
-- KEYS[7] messages hash P limit:{<base>}:<sub>:messages  run id -> its broker message
--                       ("<length of the list key>:<list key><body>"), see below
-- KEYS[8] (optional, 'release' only; one Redis server) the run's hash, and ARGV[12] the
--         lease token of the attempt giving the slot back: the release is skipped if a
--         later attempt has claimed the run since (it holds the slot now). Sent in the
--         same round trip as end_attempt.lua, which checks the same token.
-- ARGV[13], ARGV[14] (acquire, optional) the run's message, when the store is the broker's
--         Redis server and db: the list key of its queue (broker key prefix and priority
--         included) and kombu's JSON message. Admitted, it is LPUSHed here (the run is
--         published in the same round trip); parked, it is kept, and whatever hands the run
--         a slot later RPUSHes it (ahead of the queue: the slot is idle until the run
--         starts) and forgets it, so a hand-over that expires is published again by the
--         caller from the info hash, as a new message. These list keys are not in KEYS: the
--         caller only sends messages when it is one Redis server, never a cluster.
-- Order of waiting runs: see _waiting.lua (fairness keys take turns, bounded priority boost).
-- Returns {admitted, held, limit, position, run1, info1, run2, info2, ...}:
--   admitted 1 = the run holds a slot, 0 = it is parked at `position` (0-based), -1 = n/a
--   (release, sweep: `position` is then the number of runs parked or being handed a slot);
--   then the runs just handed a slot, with what is needed to publish them: their info, or
--   'queued' for a run whose message this script put on its queue.
local op, run, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or ARGV[5])
local step = tonumber(ARGV[11])
local function unpark(r) unpark_waiting(KEYS[3], KEYS[6], r) end
local function push(packed, side)
  local colon = string.find(packed, ':', 1, true)
  local length = tonumber(string.sub(packed, 1, colon - 1))
  redis.call(side, string.sub(packed, colon + 1, colon + length),
             string.sub(packed, colon + length + 1))
end
local message = ''
if op == 'acquire' and ARGV[13] and ARGV[13] ~= '' then
  message = #ARGV[13] .. ':' .. ARGV[13] .. ARGV[14]
end
-- Hand-overs that were never taken: back to the head of the queue.
for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('ZREM', KEYS[4], r)
  redis.call('ZREM', KEYS[2], r)
  park_first(KEYS[3], KEYS[6], r)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local admitted, position = -1, -1
if op == 'acquire' then
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if redis.call('ZSCORE', KEYS[2], run)
      or (redis.call('ZCARD', KEYS[2]) < limit and (not head or head == run)) then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), run)
    unpark(run)
    redis.call('ZREM', KEYS[4], run)
    redis.call('HDEL', KEYS[5], run)
    admitted = 1
  else
    park_waiting(KEYS[3], KEYS[6], run, ARGV[10], tonumber(ARGV[9]), step)
    redis.call('HSET', KEYS[5], run, ARGV[6])
    if message ~= '' then redis.call('HSET', KEYS[7], run, message) end
    admitted = 0
  end
elseif op == 'release' and (not KEYS[8]
                            or redis.call('HGET', KEYS[8], 'lease_token') == ARGV[12]) then
  -- Give the slot back, and leave the queue too (a stray copy of a run that already
  -- ended was parked: it must not be handed a slot later).
  redis.call('ZREM', KEYS[2], run)
  redis.call('ZREM', KEYS[4], run)
  unpark(run)
  redis.call('HDEL', KEYS[5], run)
  redis.call('HDEL', KEYS[7], run)
end
-- Free slots go to the longest-waiting runs.
local reply, pushed = {admitted, 0, limit, 0}, {}
local free = limit - redis.call('ZCARD', KEYS[2])
while free > 0 do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not head then break end
  unpark(head)
  if head == run and op == 'acquire' then
    -- The caller itself reached the head: it runs now instead of being re-published.
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), head)
    redis.call('HDEL', KEYS[5], head)
    reply[1] = 1
    admitted = 1
  else
    local expiry = now + tonumber(ARGV[7])
    redis.call('ZADD', KEYS[2], expiry, head)
    redis.call('ZADD', KEYS[4], expiry, head)
    reply[#reply + 1] = head
    local kept = redis.call('HGET', KEYS[7], head)
    if kept then
      redis.call('HDEL', KEYS[7], head)
      pushed[#pushed + 1] = kept
      reply[#reply + 1] = 'queued'
    else
      reply[#reply + 1] = redis.call('HGET', KEYS[5], head) or ''
    end
  end
  free = free - 1
end
-- Each goes in front of the ones before it: last to first, so the first woken is first out.
for i = #pushed, 1, -1 do push(pushed[i], 'RPUSH') end
if op == 'acquire' and admitted == 1 then
  redis.call('HDEL', KEYS[7], run)
  if message ~= '' then push(message, 'LPUSH') end
end
if admitted == 0 then
  position = redis.call('ZRANK', KEYS[3], run) or -1
elseif op ~= 'acquire' then
  position = redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4])
end
reply[2] = redis.call('ZCARD', KEYS[2])
reply[4] = position
for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], ARGV[8]) end
return reply
