-- end_attempt.lua: end an attempt: release its lease and move the run to its next status.
-- Fenced: only the attempt holding the current lease token may end it. A run that ends
-- completed is archived in the same call when the attempt sends its packed checkpoints
-- (_archive.lua): checkpoints and trace move into the archive string.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- KEYS[3] trace list    P{<run_id>}:trace
-- KEYS[4] progress hash P{<run_id>}:progress  KEYS[5] blobs hash P{<run_id>}:blobs
--          (only their TTL is set here)
-- KEYS[6] archive       P{<run_id>}:archive  (written only when a completed run is archived)
-- KEYS[7] (optional) Celery's result key of the run, when ARGV[11] is its result (results.py:
--         the result backend is this Redis server and db)
-- KEYS[7 or 8], KEYS[8 or 9] (optional, when ARGV[13] is a delivery tag) kombu's unacked
--         hash and unacked_index zset (acks.py: the broker is this Redis server and db)
-- ARGV[1] lease token  ARGV[2] new status  ARGV[3] now_ms
-- ARGV[4] TTL (ms) for all the run's keys: the retention if the status is terminal
-- ARGV[5] trace maxlen  ARGV[6] result (JSON, '' to leave unchanged)
-- ARGV[7] error (JSON, '' to leave unchanged; an error also counts one failure)
-- ARGV[8] 1 if the status is terminal
-- ARGV[9] packed checkpoints (archive.py's head, '' not to archive; only with 'completed')
-- ARGV[10] SHA-1 (hex) of the framed checkpoints that ARGV[9] packs
-- ARGV[11] Celery's encoded result meta ('' when Celery stores the result itself), written
--          to KEYS[7] and published on its channel as Celery's Redis backend does
-- ARGV[12] the result's expiry in ms (0: none)
-- ARGV[13] the delivery tag of the run's message, acknowledged here as kombu's Redis
--          transport does ('' when Celery acknowledges it itself)
-- ARGV[14..] trace event: field, value, ... (the first pair is 'type', <event type>)
-- Returns the previous status, or -1 if the lease token is stale.
local run = KEYS[1]
local cur = redis.call('HMGET', run, 'lease_token', 'status', 'step_count', 'failures')
if cur[1] ~= ARGV[1] then return -1 end
local steps = tonumber(cur[3] or '0') or 0
local set = {'status', ARGV[2], 'updated_ms', ARGV[3], 'lease_expires_ms', 0,
             'lease_owner', '', 'lease_nonce', ''}
if ARGV[6] ~= '' then set[#set + 1] = 'result'; set[#set + 1] = ARGV[6] end
if ARGV[7] ~= '' then
  -- An error counts one failure (the retry policy's count).
  set[#set + 1] = 'error'; set[#set + 1] = ARGV[7]
  set[#set + 1] = 'failures'; set[#set + 1] = (tonumber(cur[4] or '0') or 0) + 1
end
if ARGV[8] == '1' then set[#set + 1] = 'finished_ms'; set[#set + 1] = ARGV[3] end
redis.call('HSET', run, unpack(set))
trace_steps[run] = steps
trace_append(KEYS[1], KEYS[3], ARGV[5], unpack(ARGV, 14))
local archived = 0
if ARGV[9] ~= '' and ARGV[2] == 'completed' then
  archived = archive_run(KEYS[2], KEYS[3], KEYS[6], steps, ARGV[9], ARGV[10])
end
for i = 1, 6 do
  -- An archived run's steps hash and trace list were just deleted: nothing to expire.
  if archived == 0 or (i ~= 2 and i ~= 3) then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
if ARGV[11] ~= '' then
  if ARGV[12] ~= '0' then
    redis.call('SET', KEYS[7], ARGV[11], 'PX', ARGV[12])
  else
    redis.call('SET', KEYS[7], ARGV[11])
  end
  redis.call('PUBLISH', KEYS[7], ARGV[11])
end
if ARGV[13] ~= '' then
  local unacked = ARGV[11] ~= '' and 8 or 7
  redis.call('HDEL', KEYS[unacked], ARGV[13])
  redis.call('ZREM', KEYS[unacked + 1], ARGV[13])
end
return cur[2]
