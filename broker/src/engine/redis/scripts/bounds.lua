-- A stored topic's bounds for a subscription, creating its epoch if the
-- topic has none yet (never published, or lost by Redis).
-- KEYS[1] meta hash. ARGV[1] epoch if new.
-- Returns {epoch, last offset, first retained offset, created (0/1)}.
local meta = KEYS[1]
local created = 0
if redis.call('HSETNX', meta, 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', meta, 'offset', 0, 'first', 1, 'bytes', 0)
  created = 1
end
local values = redis.call('HMGET', meta, 'epoch', 'offset', 'first')
return {tonumber(values[1]), tonumber(values[2]), tonumber(values[3]), created}
