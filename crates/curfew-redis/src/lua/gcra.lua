-- GCRA (the generic cell rate algorithm, as in governor): one atomic
-- check-and-record of a rate limit. The state is one value per key, its
-- theoretical arrival time (TAT), in microseconds of the server's clock.
--
-- KEYS[1]  the key's TAT
-- ARGV[1]  emission interval in microseconds (the period per cell)
-- ARGV[2]  burst: cells allowed at once (at least 1)
--
-- Returns {1, 0} when admitted, or {0, wait} with the microseconds until
-- the next cell is allowed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local tolerance = period * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + period
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
