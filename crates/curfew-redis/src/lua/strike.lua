-- Records timeouts against a key and starts a shared cool-off at the limit.
-- One atomic step on the server: concurrent instances cannot both read the
-- old count.
--
-- KEYS[1]  the key's strike counter
-- KEYS[2]  the key's cool-off marker
-- ARGV[1]  strikes to add (a batch)
-- ARGV[2]  strikes that start a cool-off (0: never)
-- ARGV[3]  cool-off in milliseconds
-- ARGV[4]  pub/sub channel
-- ARGV[5]  the key, qualified, for the message
--
-- Returns the cool-off left in milliseconds (0: none).
local added = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cool_ms = tonumber(ARGV[3])
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return left
end
local n = redis.call('INCRBY', KEYS[1], added)
if limit > 0 and n >= limit then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', cool_ms)
  redis.call('PUBLISH', ARGV[4], 'cool ' .. cool_ms .. ' ' .. ARGV[5])
  return cool_ms
end
return 0
