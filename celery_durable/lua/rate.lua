-- rate.lua: a cluster-wide rate limit (GCRA): at most `count` starts per `period`, plus a
-- burst, across every producer and worker. Lossless callers get a reserved start time
-- (their turn, first come first served); lossy callers get a start now or nothing.
-- KEYS[1] config hash   P rate:{<base>}:config   ("count", "period_ms", "burst" override the
--                       coded values when set at runtime)
-- KEYS[2] state string  P rate:{<base>}:<sub>    the theoretical arrival time (ms): when the
--                       limit is back to idle
-- ARGV[1] now_ms  ARGV[2] coded count  ARGV[3] coded period (ms)  ARGV[4] coded burst (>= 1)
-- ARGV[5] 'wait' (lossless) | 'drop' (lossy)
-- Returns {start_ms, count, period_ms, burst}: the time the caller may start (<= now: at
-- once), or -1 if a lossy caller is turned away. Starts in any window of W ms number at
-- most burst + W x count / period.
local cfg = redis.call('HMGET', KEYS[1], 'count', 'period_ms', 'burst')
local count = tonumber(cfg[1] or ARGV[2])
local period = tonumber(cfg[2] or ARGV[3])
local burst = tonumber(cfg[3] or ARGV[4])
local now = tonumber(ARGV[1])
if count <= 0 then
  -- A paused limit (count 0): nothing starts; a lossless caller waits a whole period.
  if ARGV[5] == 'drop' then return {-1, count, period, burst} end
  return {now + period, count, period, burst}
end
local interval = period / count
local tolerance = interval * (burst - 1)
local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
local start = math.max(now, tat - tolerance)
if start > now and ARGV[5] == 'drop' then return {-1, count, period, burst} end
local next_tat = tat + interval
redis.call('SET', KEYS[2], string.format('%.3f', next_tat), 'PX',
           math.ceil(next_tat - now + period))
return {math.floor(start), count, period, burst}
