-- Moves an unreadable job aside: out of the intermediate list, into the failed registry, with the
-- reason in the job hash's `exc_info` (where RQ and the dashboard look). A job key holding
-- something other than a hash is first renamed aside, kept for inspection, and a hash put there.
-- KEYS[1] = the intermediate list, KEYS[2] = the failed registry, KEYS[3] = the job key,
-- KEYS[4] = where a job key that is no hash is moved (rqplus:corrupt:<id>)
-- ARGV[1] = job id, ARGV[2] = failed registry score (expiry time), ARGV[3] = the reason,
-- ARGV[4] = the queue's name (the `origin` of a hash put in place of a non-hash)
redis.call('LREM', KEYS[1], 1, ARGV[1])
local kind = redis.call('TYPE', KEYS[3]).ok
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('RENAME', KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[3], 'origin', ARGV[4])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], 'status', 'failed', 'exc_info', ARGV[3])
return 1
