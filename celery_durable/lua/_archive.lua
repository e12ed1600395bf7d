-- _archive.lua: pack a completed run's checkpoints and trace into its archive string, in
-- front of end_attempt.lua (the script that completes runs; celery_durable/archive.py has
-- the format). The worker sends the packed checkpoints (`head`, maybe compressed, which
-- Lua cannot do) and the SHA-1 of their framing; the framing is recomputed here from the
-- steps hash, and the run is archived only if it matches, so the archive holds exactly the
-- run's checkpoints. The trace entries are appended as they are, joined by newlines (cjson
-- escapes newlines in entries). The steps hash and the trace list are then deleted; a later
-- trace entry starts a new list, which readers put after the archived ones.
-- Returns 1 if archived, 0 if not (an archive exists already, or the checkpoints differ
-- from what the worker packed: the run then keeps its steps hash and trace list).
-- `count` is the run's step_count, which the caller has read.
local function archive_run(steps_key, trace_key, archive_key, count, head, digest)
  local flat = redis.call('HGETALL', steps_key)
  if #flat ~= 2 * count then return 0 end
  local by_pos = {}
  for i = 1, #flat, 2 do by_pos[flat[i]] = flat[i + 1] end
  local framed = {}
  for pos = 0, count - 1 do
    local payload = by_pos[tostring(pos)]
    if not payload then return 0 end
    framed[pos + 1] = #payload .. ':' .. payload
  end
  if redis.sha1hex(table.concat(framed)) ~= digest then return 0 end
  local trace = redis.call('LRANGE', trace_key, 0, -1)
  -- NX: a run archived before (then reopened) keeps its first archive; checked here rather
  -- than first, which would cost every archive one more call.
  if not redis.call('SET', archive_key, head .. table.concat(trace, '\n'), 'NX') then
    return 0
  end
  redis.call('DEL', steps_key, trace_key)
  return 1
end
