-- _trace.lua: the one writer of trace entries, in front of every script that appends one.
-- A run's trace is a list of JSON arrays [at_ms, steps, type, field, value, ...], oldest
-- first and capped at the newest `maxlen` entries: at_ms is the Redis server's clock (epoch
-- ms), steps the run's committed step count when the entry was written. Steps get no entry
-- of their own (a checkpoint already says when it was committed): readers put each
-- step_committed event between the entries whose step counts bracket its position.
-- The clock and the step count are read once per script call (append_logs writes one entry
-- per record; no script that writes entries commits a step in between).
-- An entry that creates the list (the first of a run, or the first after the run was
-- archived, see _archive.lua) gives it the run hash's TTL, if the run hash has one yet.
local trace_at, trace_steps = nil, {}
local function trace_append(run_key, trace_key, maxlen, ...)
  if not trace_at then
    local t = redis.call('TIME')
    trace_at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local steps = trace_steps[run_key]
  if not steps then
    steps = tonumber(redis.call('HGET', run_key, 'step_count') or '0') or 0
    trace_steps[run_key] = steps
  end
  local entry = {trace_at, steps}
  for i = 1, select('#', ...) do entry[i + 2] = tostring((select(i, ...))) end
  local cap = tonumber(maxlen)
  local length = redis.call('RPUSH', trace_key, cjson.encode(entry))
  if length > cap then
    redis.call('LTRIM', trace_key, -cap, -1)
  elseif length == 1 then
    local ttl = redis.call('PTTL', run_key)
    if ttl > 0 then redis.call('PEXPIRE', trace_key, ttl) end
  end
end
