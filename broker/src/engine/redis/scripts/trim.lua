-- Trims a topic by its retention rule (the periodic pass, for topics whose
-- oldest message is due by age). KEYS[1] meta, KEYS[2] stream.
-- ARGV: 1 max_messages, 2 max_bytes, 3 oldest ms kept, 4 budget.
-- Returns the timestamp of the oldest entry kept (0 if empty).
return trim(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]))
