-- After a job id left the list by a plain (B)LMOVE: forgets its priority, refills the list.
-- KEYS[1] = the queue list, KEYS[2] = its window priorities, KEYS[3] = its window counts
-- ARGV[1] = backlog key prefix, ARGV[2] = job hash key prefix, ARGV[3] = the id that left
-- Returns the list's length.
local q = queue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
left_window(q, ARGV[3])
return refill(q)
