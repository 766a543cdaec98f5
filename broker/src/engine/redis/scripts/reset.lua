-- Deletes a topic's history and starts a new epoch; tells every node on
-- the topic's channel. KEYS[1] meta hash, KEYS[2] stream.
-- ARGV[1] the new epoch, ARGV[2] channel, ARGV[3] envelope id (8 bytes).
-- Returns the new epoch, or 0 if the topic has no stream.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0, 'first', 1, 'bytes', 0)
local epoch = tonumber(ARGV[1])
redis.call('PUBLISH', ARGV[2], '\2' .. ARGV[3] .. u64(epoch) .. u64(0))
return epoch
