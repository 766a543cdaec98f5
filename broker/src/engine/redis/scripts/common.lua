-- Shared by the scripts below (prepended to each by the engine).
-- A number below 2^53 as 8 big-endian bytes (Lua numbers are doubles).
local function u64(n)
  local bytes = {}
  for i = 8, 1, -1 do
    bytes[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(bytes)
end

-- Deletes the oldest entries of a stream that break a retention limit, at
-- most `budget` of them; keeps the meta hash's `first` and `bytes` right.
-- Returns the timestamp of the oldest entry kept (0 if the stream is empty).
local function trim(meta, stream, max_messages, max_bytes, oldest_ms, budget)
  local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
  for _ = 1, budget do
    local entries = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #entries == 0 then
      return 0
    end
    local id = entries[1][1]
    local fields = entries[1][2]
    local ts = tonumber(fields[2])
    local size = string.len(fields[4])
    local len = redis.call('XLEN', stream)
    if len <= max_messages and bytes <= max_bytes and ts >= oldest_ms then
      return ts
    end
    redis.call('XDEL', stream, id)
    bytes = redis.call('HINCRBY', meta, 'bytes', -size)
    local offset = tonumber(string.match(id, '^(%d+)'))
    redis.call('HSET', meta, 'first', offset + 1)
  end
  local entries = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #entries == 0 then
    return 0
  end
  return tonumber(entries[1][2][2])
end
