-- append_event.lua: append a trace event on behalf of an attempt (fenced) or an observer.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] trace list    P{<run_id>}:trace
-- ARGV[1] lease token, or '' for an unfenced event  ARGV[2] trace maxlen
-- ARGV[3..] field, value, field, value, ... (the first pair is 'type', <event type>)
-- Returns 1 if appended, -1 if the token is stale, 0 if the run does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[1] then return -1 end
trace_append(KEYS[1], KEYS[2], ARGV[2], unpack(ARGV, 3))
return 1
