"""The Lua of one live run per session: the library the task store's scripts start with.

Two runs writing one ADK session at once make one of them fail with
``StaleSessionError`` half-way, so each session (app, user, session) has a
line in Redis (names in :class:`~agent_runtime.keys.KeySchema`):

- ``session-lease:<part>``: the task id of the one run that may use the session
  now: its live run, or the next one, handed the lease and on its way to a daemon;
- ``session-queue:<part>``: the task ids waiting for the lease, in submit order;
- ``task-session:<task_id>``: the ``<part>`` of a run in a line (outside its
  record, which the run itself may write);
- ``parked:<task_id>``: the runs-stream entry of a waiting run that a daemon
  read before its turn (the stream entry itself is acknowledged and deleted, so
  a waiting run holds no run slot and no place in any daemon's pending list).

A submit takes the free lease or joins the queue; a daemon's claim starts a run
only if it holds the lease, else parks its entry; every terminal transition
releases: a holder hands the lease to the first queued run of the queue and puts
its parked entry back on the runs stream, a waiting run leaves the queue. All of
it happens inside the task store's scripts, so no crash can leave a line half
moved: a daemon that dies holding a lease leaves a live record, and the
reconcile or peer takeover that fails that record releases the lease with it.

Everything read here is untrusted (anyone who can write to Redis can write any
key): a key of the wrong type is garbage and is deleted or ignored, never left
to block a transition; a lease naming a run that is not live (its end recorded
by some other way, its record gone) is taken back at the next look.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LINE_LUA", "MAX_PARKED_FIELDS"]

MAX_PARKED_FIELDS: Final = 256
"""A parked entry with more field/value items than this is garbage (admission takes a dozen);
``unpack`` of a huge one would abort the script half-way."""

# Every script that starts with this library has the coordination prefix
# (KeySchema.coordination, `<prefix>{<prefix>}`) in ARGV[1]: every key it builds lies
# in the one coordination slot, as Redis Cluster requires of one script.
LINE_LUA: Final = r"""
local P = ARGV[1]
local LIVE = {queued = true, starting = true, running = true}
local TERMINAL = {completed = true, failed = true, timed_out = true, aborted = true}

-- What a string key holds, or nil (a key of another type is garbage).
local function get_str(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then return v end
  return nil
end

-- A task's state, or nil (no record, or a record that is no hash).
local function state_of(task)
  local v = redis.pcall('HGET', P .. 'task:' .. task, 'state')
  if type(v) == 'string' then return v end
  return nil
end

-- The key of a session's queue, with garbage of another type in its place deleted.
local function queue_of(part)
  local key = P .. 'session-queue:' .. part
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= 'list' then redis.call('DEL', key) end
  return key
end

-- Hands the session's free lease to the first run of its queue that is still queued and
-- puts that run's parked entry back on the runs stream; returns that run, or nil.
local function promote(part)
  local queue = queue_of(part)
  while true do
    local head = redis.call('LPOP', queue)
    if not head then return nil end
    local parked = P .. 'parked:' .. head
    if state_of(head) == 'queued' then
      redis.call('SET', P .. 'session-lease:' .. part, head)
      redis.pcall('HDEL', P .. 'task:' .. head, 'waiting_for')
      local entry = redis.pcall('HGETALL', parked)
      if type(entry) == 'table' and entry.err == nil and #entry > 0
          and #entry <= __MAX_PARKED__ then
        redis.pcall('XADD', P .. 'runs', '*', unpack(entry))
      end
      redis.call('DEL', parked)
      return head
    end
    redis.call('DEL', parked)
  end
end

-- The run that holds the session, after taking back a lease that names no live run:
-- nil if the session is free.
local function holder(part)
  local lease = P .. 'session-lease:' .. part
  local h = get_str(lease)
  if h and LIVE[state_of(h) or ''] then return h end
  redis.call('DEL', lease)
  return promote(part)
end

-- Takes a run whose end is being recorded out of its session's line: a holder passes the
-- lease on; a waiting run leaves the queue, and the run behind it waits for the one ahead.
local function release(task)
  local bind = P .. 'task-session:' .. task
  local part = get_str(bind)
  if not part then return end
  redis.call('DEL', bind)
  local lease = P .. 'session-lease:' .. part
  if get_str(lease) == task then
    redis.call('DEL', lease)
    promote(part)
    return
  end
  redis.call('DEL', P .. 'parked:' .. task)
  local queue = queue_of(part)
  local pos = redis.call('LPOS', queue, task)
  if pos then
    local behind = redis.call('LINDEX', queue, pos + 1)
    local ahead = redis.pcall('HGET', P .. 'task:' .. task, 'waiting_for')
    if behind and type(ahead) == 'string' and state_of(behind) == 'queued' then
      redis.pcall('HSET', P .. 'task:' .. behind, 'waiting_for', ahead)
    end
    redis.call('LREM', queue, 1, task)
  end
  holder(part)
end
""".replace("__MAX_PARKED__", str(MAX_PARKED_FIELDS))
