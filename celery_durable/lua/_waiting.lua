-- _waiting.lua: the order of runs waiting for a limit (a concurrency slot or a rate turn),
-- shared by slots.lua and rate.lua (prepended to both when they are loaded).
-- A waiting run gets order number max(its fairness key's last, the virtual time) + 1, so keys
-- take turns (a key with 10,000 waiting runs does not hold back another key's first one),
-- minus rank x step (a priority boost, bounded: a run is overtaken at most
-- (highest rank - its rank) x step times, so nothing starves). Order numbers count, they
-- are not clocks: runs that wait from the same millisecond keep their order.
-- parked: zset run id -> order;  fair: hash '_v' -> virtual time (the order number of the
-- last run taken off the queue), 'k:<fairness key>' -> that key's last order number,
-- 'r:<run id>' -> '<order number>|<fairness key>', 'q:<run id>' -> its priority rank,
-- 'p:<rank>' -> how many runs of that rank wait.
local function park_waiting(parked, fair, r, fkey, rank, step)
  if redis.call('ZSCORE', parked, r) then return end
  local last = tonumber(redis.call('HGET', fair, 'k:' .. fkey) or '0')
  local order = math.max(last, tonumber(redis.call('HGET', fair, '_v') or '0')) + 1
  redis.call('HSET', fair, 'k:' .. fkey, order, 'r:' .. r, order .. '|' .. fkey, 'q:' .. r, rank)
  redis.call('HINCRBY', fair, 'p:' .. rank, 1)
  redis.call('ZADD', parked, order - rank * step, r)
end

-- Put r first in the queue (a hand-over that was never taken, a late start).
local function park_first(parked, fair, r)
  local first = redis.call('ZRANGE', parked, 0, 0, 'WITHSCORES')
  if not redis.call('ZSCORE', parked, r) then
    local rank = redis.call('HGET', fair, 'q:' .. r)
    if not rank then
      redis.call('HSET', fair, 'q:' .. r, 0)
      rank = '0'
    end
    redis.call('HINCRBY', fair, 'p:' .. rank, 1)
  end
  redis.call('ZADD', parked, first[2] and (tonumber(first[2]) - 1) or 0, r)
end

-- Take r off the queue; the virtual time moves on to its order number, and a fairness key
-- whose last waiting run it was is forgotten (the hash stays small).
local function unpark_waiting(parked, fair, r)
  if redis.call('ZREM', parked, r) == 0 then return end
  local rank = redis.call('HGET', fair, 'q:' .. r)
  if rank then
    redis.call('HDEL', fair, 'q:' .. r)
    if redis.call('HINCRBY', fair, 'p:' .. rank, -1) <= 0 then
      redis.call('HDEL', fair, 'p:' .. rank)
    end
  end
  local meta = redis.call('HGET', fair, 'r:' .. r)
  if not meta then return end
  redis.call('HDEL', fair, 'r:' .. r)
  local sep = string.find(meta, '|', 1, true)
  local order, fkey = tonumber(string.sub(meta, 1, sep - 1)), string.sub(meta, sep + 1)
  if order > tonumber(redis.call('HGET', fair, '_v') or '0') then
    redis.call('HSET', fair, '_v', order)
  end
  if tonumber(redis.call('HGET', fair, 'k:' .. fkey) or '-1') == order then
    redis.call('HDEL', fair, 'k:' .. fkey)
  end
end

