"""The Lua scripts behind :class:`~leadperf.scale.RedisLimiter`: one script per decision.

Every script touches only keys of one platform, and those keys share a ``{tag}`` hash tag,
so each runs on a single Redis Cluster slot. Times come from the server's ``TIME``, so
workers on machines with skewed clocks still agree on lease expiry and spacing. Floats
leave a script as strings: Redis would truncate a returned Lua number to an integer.

Keys of a platform: ``<prefix>{tag}:slots`` (sorted set, lease token -> expiry time) and
``<prefix>{tag}:state`` (hash: ``cap`` slots allowed now, ``limit`` configured slots,
``adaptive`` added spacing, ``next`` earliest next start, ``blocked`` Retry-After end,
``escalated``, ``successes``, ``timeouts``, ``throttles``).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "RENEW", "REPORT"]

# The state hash outlives its last write by this long (ms): long enough to remember a
# slow-down between bursts, short enough that an idle platform leaves nothing behind.
STATE_TTL_MS = 600_000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f(x) return string.format('%.6f', x) end
"""

#: KEYS: slots, state. ARGV: token, limit, delay (s), lease (s), then tokens this worker
#: released since its last call (their release rides along instead of a round trip).
#: Returns {1, wait_seconds, slowed} for a granted slot (sleep ``wait`` before sending) or
#: {0, seconds until the first lease expires, slowed} when every slot is taken.
ACQUIRE = (
    _NOW
    + """
local limit = tonumber(ARGV[2])
local delay = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
for i = 5, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local st = redis.call('HMGET', KEYS[2], 'cap', 'adaptive', 'blocked', 'next', 'limit', 'timeouts')
local cap = tonumber(st[1]) or limit
if cap > limit then cap = limit end
local adaptive = tonumber(st[2]) or 0
local slowed = 0
if cap < limit or adaptive > 0 or (tonumber(st[6]) or 0) > 0 then slowed = 1 end
local held = redis.call('ZCARD', KEYS[1])
if held >= cap then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local hint = 0.05
  if first[2] then hint = tonumber(first[2]) - now end
  return {0, f(hint), slowed}
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000) + 1000)
local spacing = math.max(delay, adaptive)
local start = math.max(now, tonumber(st[4]) or 0, tonumber(st[3]) or 0)
local write = st[5] ~= ARGV[2]
if spacing > 0 or start > now then
  redis.call('HSET', KEYS[2], 'next', f(start + spacing))
  write = true
end
if write then
  redis.call('HSET', KEYS[2], 'limit', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], """
    + str(STATE_TTL_MS)
    + """)
end
return {1, f(start - now), slowed}
"""
)

#: KEYS: slots. ARGV: lease (s), token... Pushes every still-held token's expiry to
#: now + lease (ZADD XX never resurrects a lease that expired and was taken back).
RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000) + 1000)
return renewed
"""
)

#: KEYS: state. ARGV: kind ("throttle", "timeout" or "success"), retry_after (s, or -1),
#: limit. Mirrors the in-process adaptive slow-down: a throttle halves the slots and
#: doubles the spacing (at most once a second), three timeouts in a row count as one,
#: five successes in a row undo one step. Returns the slots allowed now.
REPORT = (
    _NOW
    + """
local kind = ARGV[1]
local retry_after = tonumber(ARGV[2])
local st = redis.call('HMGET', KEYS[1], 'cap', 'adaptive', 'blocked', 'escalated',
                      'successes', 'timeouts', 'limit')
local limit = tonumber(st[7]) or tonumber(ARGV[3])
local cap = tonumber(st[1]) or limit
if cap > limit then cap = limit end
local adaptive = tonumber(st[2]) or 0
local blocked = tonumber(st[3]) or 0
local escalated = tonumber(st[4]) or 0
local successes = tonumber(st[5]) or 0
local timeouts = tonumber(st[6]) or 0
if kind == 'timeout' then
  timeouts = timeouts + 1
  if timeouts >= 3 then
    timeouts = 0
    kind = 'throttle'
  end
end
if kind == 'throttle' then
  successes = 0
  redis.call('HINCRBY', KEYS[1], 'throttles', 1)
  if now - escalated >= 1.0 then
    escalated = now
    cap = math.max(1, math.floor(cap / 2))
    adaptive = math.min(30.0, math.max(0.1, adaptive * 2))
  end
  if retry_after >= 0 and now + retry_after > blocked then blocked = now + retry_after end
elseif kind == 'success' then
  timeouts = 0
  if cap < limit or adaptive > 0 then
    successes = successes + 1
    if successes >= 5 then
      successes = 0
      adaptive = adaptive / 2
      if adaptive < 0.05 then adaptive = 0 end
      if cap < limit then cap = cap + 1 end
    end
  end
end
redis.call('HSET', KEYS[1], 'cap', cap, 'limit', limit, 'adaptive', f(adaptive),
           'blocked', f(blocked), 'escalated', f(escalated), 'successes', successes,
           'timeouts', timeouts)
local ttl = """
    + str(STATE_TTL_MS)
    + """
local until_unblocked = math.ceil((blocked - now) * 1000)
if until_unblocked + 60000 > ttl then ttl = until_unblocked + 60000 end
redis.call('PEXPIRE', KEYS[1], ttl)
return cap
"""
)
