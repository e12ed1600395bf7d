-- append_logs.lua: append log records captured during an attempt to the run's trace.
-- Unfenced: the records of an attempt that was taken over still say what it did. Written
-- only while the run exists, so the trace never outlives the run (a list the first record
-- creates, e.g. after the run was archived, takes the run's TTL: _trace.lua).
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] trace list    P{<run_id>}:trace
-- ARGV[1] trace maxlen
-- ARGV[2..] six values per record: level name, logger, message, step ('' outside a step),
--           attempt, logged at (epoch ms)
-- Returns the number of records appended (0 if the run does not exist).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = 0
for i = 2, #ARGV - 5, 6 do
  trace_append(KEYS[1], KEYS[2], ARGV[1], 'type', 'log', 'level', ARGV[i],
               'logger', ARGV[i + 1], 'message', ARGV[i + 2], 'step', ARGV[i + 3],
               'attempt', ARGV[i + 4], 'ms', ARGV[i + 5])
  n = n + 1
end
return n
