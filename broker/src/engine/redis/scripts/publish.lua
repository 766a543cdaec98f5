-- Publishes one message to a stored topic, atomically: sets the topic's
-- epoch once, takes the next offset, writes it into the message body,
-- appends the body to the stream with the offset as its id, trims by the
-- retention rule (bounded work), and publishes the envelope on the topic's
-- channel.
-- KEYS[1] meta hash, KEYS[2] stream.
-- ARGV: 1 epoch if new, 2 body (position slots zeroed), 3 epoch slot,
-- 4 offset slot (0-based starts of 8 bytes), 5 timestamp ms, 6 max_messages,
-- 7 max_bytes, 8 oldest ms kept, 9 channel, 10 envelope id (8 bytes),
-- 11 trim budget.
-- Returns {epoch, offset, created (0/1), oldest timestamp kept}.
local meta, stream = KEYS[1], KEYS[2]
local created = 0
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0, 'first', 1, 'bytes', 0)
  created = 1
end
epoch = tonumber(epoch)
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local body = ARGV[2]
local pe, po = tonumber(ARGV[3]), tonumber(ARGV[4])
body = string.sub(body, 1, pe) .. u64(epoch) .. string.sub(body, pe + 9, po)
  .. u64(offset) .. string.sub(body, po + 9)
redis.call('XADD', stream, offset .. '-0', 't', ARGV[5], 'b', body)
redis.call('HINCRBY', meta, 'bytes', string.len(body))
local oldest = trim(meta, stream, tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8]), tonumber(ARGV[11]))
redis.call('PUBLISH', ARGV[9], '\1' .. ARGV[10] .. u64(epoch) .. u64(offset) .. body)
return {epoch, offset, created, oldest}
