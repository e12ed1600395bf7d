-- rate.lua: a cluster-wide rate limit (GCRA): at most `count` starts per `period`, plus a
-- burst, across every producer and worker; runs over the rate wait in one queue per limit
-- and key, in the order of _waiting.lua (fairness keys take turns, priorities go first).
-- Ops:
--   'reserve'  a turn for a step (or a lossy run): the time the caller may start, first come
--              first served; a lossy ('drop') caller gets a start now or nothing
--   'take'     a run's turn: when nobody waits and a turn comes within the lookahead, the
--              run takes it (it starts then); otherwise it waits in the queue
--   'dispatch' the limit's dispatcher (a due timer): every waiting run whose turn comes
--              within the lookahead takes it, best first; they are kept as hand-overs until
--              the dispatcher confirms it published them (else, after the hand-over TTL,
--              they wait first in the queue again: a crashed dispatcher loses no run)
-- KEYS[1] config hash   P rate:{<base>}:config   ("count", "period_ms", "burst" override the
--                       coded values when set at runtime)
-- KEYS[2] state string  P rate:{<base>}:<sub>    the theoretical arrival time (ms): when the
--                       limit is back to idle
-- KEYS[3] parked zset   P rate:{<base>}:<sub>:parked   run id -> queue order
-- KEYS[4] info hash     P rate:{<base>}:<sub>:info     run id -> JSON to publish it; '_spec'
--                       -> 'count|period_ms|burst' as coded (for dispatchers)
-- KEYS[5] fair hash     P rate:{<base>}:<sub>:fair     the queue's bookkeeping (_waiting.lua)
-- KEYS[6] handed zset   P rate:{<base>}:<sub>:handed   run id -> hand-over expiry (ms)
-- ARGV[1] op  ARGV[2] now_ms  ARGV[3] coded count  ARGV[4] coded period (ms)
-- ARGV[5] coded burst (>= 1)  (ARGV[3..5] '' in 'dispatch': the queue's '_spec')
-- ARGV[6] 'wait' (lossless) | 'drop' (lossy)   ('reserve')
-- ARGV[7] run id  ARGV[8] info JSON  ARGV[9] priority rank (>= 0)  ARGV[10] fairness key
-- ARGV[11] priority step  ARGV[15] '1' to wait first (a late start)   ('take')
-- ARGV[12] lookahead (ms)  ARGV[13] hand-over TTL (ms)  ARGV[14] TTL (ms) of the queue keys
-- Returns {start_ms, count, period_ms, burst, ...}:
--   'reserve'  start_ms: the time the caller may start (<= now: at once), -1: turned away
--   'take'     {start_ms, count, period, burst, -1, 0}: the run's turn (<= now + lookahead)
--              {-2, count, period, burst, position, due_ms}: it waits at `position`
--              (0-based); a dispatcher should look at the queue at due_ms
--   'dispatch' {due_ms, count, period, burst, expiry_ms, run1, info1, start1, ...}: the
--              runs handed a turn (to publish, then confirm); due_ms: when to dispatch
--              again for the runs still waiting (-1: none wait); expiry_ms: the earliest
--              expiry of earlier hand-overs never confirmed (-1: none)
-- Starts in any window of W ms number at most burst + W x count / period.
local op, now = ARGV[1], tonumber(ARGV[2])
local coded = {ARGV[3], ARGV[4], ARGV[5]}
if op == 'dispatch' then
  local spec = redis.call('HGET', KEYS[4], '_spec') or '1|1000|1'
  local a, b = string.find(spec, '|', 1, true), nil
  b = string.find(spec, '|', a + 1, true)
  coded = {string.sub(spec, 1, a - 1), string.sub(spec, a + 1, b - 1), string.sub(spec, b + 1)}
end
local cfg = redis.call('HMGET', KEYS[1], 'count', 'period_ms', 'burst')
local count = tonumber(cfg[1] or coded[1])
local period = tonumber(cfg[2] or coded[2])
local burst = tonumber(cfg[3] or coded[3])

-- The earliest start the limit allows now (without taking it), and its state.
local function next_turn()
  local interval = period / count
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  return math.max(now, tat - interval * (burst - 1)), tat, interval
end
local function take_turn(tat, interval)
  local next_tat = tat + interval
  redis.call('SET', KEYS[2], string.format('%.3f', next_tat), 'PX',
             math.ceil(next_tat - now + period))
end

if op == 'reserve' then
  if count <= 0 then
    -- A paused limit (count 0): nothing starts; a lossless caller waits a whole period.
    if ARGV[6] == 'drop' then return {-1, count, period, burst} end
    return {now + period, count, period, burst}
  end
  local start, tat, interval = next_turn()
  if start > now and ARGV[6] == 'drop' then return {-1, count, period, burst} end
  take_turn(tat, interval)
  return {math.floor(start), count, period, burst}
end

local lookahead, ttl = tonumber(ARGV[12]), ARGV[14]
-- Hand-overs whose dispatcher never confirmed them: first in the queue again.
for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)) do
  redis.call('ZREM', KEYS[6], r)
  park_first(KEYS[3], KEYS[5], r)
end
-- When the queue's dispatcher should run next for its waiting runs: a lookahead before the
-- next turn, -1 if nothing waits.
local function due_turns()
  if redis.call('ZCARD', KEYS[3]) == 0 then return -1 end
  if count <= 0 then return now + period end
  return math.max(now, math.floor(next_turn() - lookahead))
end
-- The earliest of d and the expiry of the hand-overs already there (-1: none).
local function with_hand_overs(d)
  local expiry = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')[2]
  if expiry and (d < 0 or tonumber(expiry) < d) then return tonumber(expiry) end
  return d
end
local function keep()
  for i = 3, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
end

if op == 'take' then
  local run = ARGV[7]
  if count > 0 and redis.call('ZCARD', KEYS[3]) == 0 then
    local start, tat, interval = next_turn()
    if start <= now + lookahead then
      take_turn(tat, interval)
      return {math.floor(start), count, period, burst, -1, 0}
    end
  end
  if ARGV[15] == '1' then
    park_first(KEYS[3], KEYS[5], run)
  else
    park_waiting(KEYS[3], KEYS[5], run, ARGV[10], tonumber(ARGV[9]), tonumber(ARGV[11]))
  end
  redis.call('HSET', KEYS[4], run, ARGV[8], '_spec', coded[1] .. '|' .. coded[2] .. '|' .. coded[3])
  keep()
  return {-2, count, period, burst, redis.call('ZRANK', KEYS[3], run) or 0,
          with_hand_overs(due_turns())}
end

-- 'dispatch': hand the turns that come within the lookahead to the best waiting runs.
local reply = {-1, count, period, burst, with_hand_overs(-1)}
while count > 0 do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not head then break end
  local start, tat, interval = next_turn()
  if start > now + lookahead then break end
  take_turn(tat, interval)
  unpark_waiting(KEYS[3], KEYS[5], head)
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[13]), head)
  reply[#reply + 1] = head
  reply[#reply + 1] = redis.call('HGET', KEYS[4], head) or ''
  reply[#reply + 1] = math.floor(start)
end
reply[1] = due_turns()
keep()
return reply
