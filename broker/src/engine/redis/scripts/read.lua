-- Reads entries of a topic's stream with offsets from ARGV[2] to ARGV[3]
-- (inclusive), at most ARGV[4], if its epoch is still ARGV[1].
-- KEYS[1] meta hash, KEYS[2] stream.
-- Returns {current epoch (0 if none), entries}; entries are empty when the
-- epoch differs.
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if epoch ~= tonumber(ARGV[1]) then
  return {epoch, {}}
end
return {epoch, redis.call('XRANGE', KEYS[2], ARGV[2] .. '-0', ARGV[3] .. '-0', 'COUNT', ARGV[4])}
