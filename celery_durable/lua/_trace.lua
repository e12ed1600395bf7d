-- _trace.lua: the one writer of trace entries, in front of every script that appends one.
-- A run's trace is a list of JSON arrays [at_ms, steps, type, field, value, ...], oldest
-- first and capped at the newest `maxlen` entries: at_ms is the Redis server's clock (epoch
-- ms), steps the run's committed step count when the entry was written. Steps get no entry
-- of their own (a checkpoint already says when it was committed): readers put each
-- step_committed event between the entries whose step counts bracket its position.
local function trace_append(run_key, trace_key, maxlen, ...)
  local t = redis.call('TIME')
  local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local steps = tonumber(redis.call('HGET', run_key, 'step_count') or '0') or 0
  local entry = {at, steps}
  for i = 1, select('#', ...) do entry[i + 2] = tostring((select(i, ...))) end
  local cap = tonumber(maxlen)
  if redis.call('RPUSH', trace_key, cjson.encode(entry)) > cap then
    redis.call('LTRIM', trace_key, -cap, -1)
  end
end
