-- Charges CPU time to a key's quota window and blocks the key everywhere
-- once the window's quota is spent. One atomic step on the server.
--
-- KEYS[1]  the key's usage in the current window (nanoseconds)
-- KEYS[2]  the key's "quota spent" marker
-- ARGV[1]  nanoseconds to add (a batch)
-- ARGV[2]  the quota in nanoseconds
-- ARGV[3]  the window in milliseconds
-- ARGV[4]  pub/sub channel
-- ARGV[5]  the key, qualified, for the message
--
-- Returns the time left until the window frees the key, in milliseconds
-- (0: within its quota).
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used == tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if used >= tonumber(ARGV[2]) then
  local left = redis.call('PTTL', KEYS[1])
  if left <= 0 then
    left = tonumber(ARGV[3])
    redis.call('PEXPIRE', KEYS[1], left)
  end
  if redis.call('SET', KEYS[2], '1', 'PX', left, 'NX') then
    redis.call('PUBLISH', ARGV[4], 'spent ' .. left .. ' ' .. ARGV[5])
  end
  return left
end
return 0
