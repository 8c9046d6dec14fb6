-- One atomic GCRA step (the generic cell rate algorithm, as governor does it
-- in memory): admit a message if the user's theoretical arrival time (TAT)
-- is at most `tolerance` ahead of now, and move it one interval on.
--
-- KEYS[1]  the user's key
-- ARGV[1]  the emission interval T, microseconds (period / count)
-- ARGV[2]  the burst: messages allowed at once
-- Returns 0 when admitted, else the microseconds until the next admission.
--
-- The clock is the server's (TIME), so every instance agrees on it, and the
-- read, the decision and the write are one script: no other client's step
-- can fall between them.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local wait = tat - now - interval * (burst - 1)
if wait > 0 then
  return wait
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return 0
