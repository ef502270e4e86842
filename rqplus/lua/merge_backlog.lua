-- Appends every backlog id to the list, in run order, and forgets the window's priorities: the
-- queue becomes one plain list again (before RQ's `empty` script deletes the jobs of that list).
-- KEYS[1] = the queue list, KEYS[2] = its window priorities, KEYS[3] = its window counts,
-- KEYS[4...] = its backlog lists, most urgent first. Returns how many ids were moved.
-- Its cost is proportional to the backlog (as RQ's `empty` is to the list).
local moved = 0
for i = 4, #KEYS do
  while true do
    local ids = redis.call('LPOP', KEYS[i], 5000)
    if not ids then break end
    redis.call('RPUSH', KEYS[1], unpack(ids))
    moved = moved + #ids
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
return moved
