"""The limiter's Lua scripts for Redis, loaded once per server (SCRIPT LOAD) and
run with EVALSHA. Each script touches only the keys it is given, all of one
tenant's hash tag (see gateway.limits.keys), so it runs atomically on a single
server or on the one Redis Cluster node that owns the tenant's slot.

Redis' Lua numbers are doubles: amounts are written from the strings they came
in (ARGV), never through tostring(), which would print 1e+15; bucket names and
expiry times are computed by the caller. Replies are Lua numbers, which Redis
turns into exact integers below 2**53. (string.format costs about a
microsecond a call in Redis' Lua: the scripts do without it.)
:mod:`gateway.limits.memory` implements the same steps in Python for a single
replica; the tests run one suite against both.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = r"""
local now = tonumber(ARGV[1])

-- Give back what a reservation holds: KEYS[1] records, KEYS[2] expiries, KEYS[3] sums.
local function release(id)
  local rec = redis.call('HGET', KEYS[1], id)
  if rec then
    local f = nil
    for part in string.gmatch(rec, '[^|]+') do
      if f == nil then
        f = part
      else
        local left = redis.call('HINCRBY', KEYS[3], f, '-' .. part)
        if left <= 0 then redis.call('HDEL', KEYS[3], f) end
        f = nil
      end
    end
    redis.call('HDEL', KEYS[1], id)
  end
  redis.call('ZREM', KEYS[2], id)
  return rec
end

-- Reservations whose owner never settled them (a replica killed mid-request).
local function purge()
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 512)
  for _, id in ipairs(expired) do release(id) end
end

-- Count `amount` in the current bucket of a sliding-window hash. The TTL (two
-- windows) is renewed, and old buckets dropped, when a bucket starts: a key
-- whose newest bucket is older than its TTL has nothing left in the window.
local function bump(key, field, amount, buckets, ttl)
  if redis.call('HINCRBY', key, field, amount) == tonumber(amount) then
    redis.call('PEXPIRE', key, ttl)
    if redis.call('HLEN', key) > buckets + 2 then
      local oldest = tonumber(field) - buckets
      for _, f in ipairs(redis.call('HKEYS', key)) do
        if tonumber(f) <= oldest then redis.call('HDEL', key, f) end
      end
    end
  end
end
"""

# KEYS: records, expiries, sums, then one key per check.
# ARGV: now_ms, mode (reserve | status), id, expires_ms, state_ttl_ms, bucket_ms,
#       buckets, window_ttl_ms, n_checks, n_holds,
#       then the window's bucket names (`buckets` of them, oldest first),
#       then per check: kind, key index, maximum, amount, in-flight field, period end ms,
#       then per hold: field, amount.
# Returns {admitted, then per check: settled, in-flight, wait_ms, reset_ms}.
RESERVE: Final = (
    _COMMON
    + r"""
local mode = ARGV[2]
local bucket_ms = tonumber(ARGV[6])
local buckets = tonumber(ARGV[7])
local window_ttl = ARGV[8]
local n_checks = tonumber(ARGV[9])
local n_holds = tonumber(ARGV[10])
local cur = math.floor(now / bucket_ms)
local current = ARGV[10 + buckets]
local first = 11 + buckets
purge()

local fields = {}
for i = 1, buckets do fields[i] = ARGV[10 + i] end

-- Every in-flight sum the checks read, in one call.
local wanted = {}
for c = 0, n_checks - 1 do
  local field = ARGV[first + c * 6 + 4]
  if field ~= '' then wanted[#wanted + 1] = field end
end
local sums = {}
if #wanted > 0 then
  local values = redis.call('HMGET', KEYS[3], unpack(wanted))
  for i, field in ipairs(wanted) do sums[field] = tonumber(values[i]) or 0 end
end

local admitted = 1
local out = {}
local checks = {}
for c = 0, n_checks - 1 do
  local base = first + c * 6
  local kind = ARGV[base]
  local key = KEYS[tonumber(ARGV[base + 1])]
  local maximum = tonumber(ARGV[base + 2])
  local amount_text = ARGV[base + 3]
  local amount = tonumber(amount_text)
  local field = ARGV[base + 4]
  local period_end = tonumber(ARGV[base + 5])
  local inflight = sums[field] or 0
  local settled, wait, reset = 0, 0, 0
  if kind == 'p' then
    settled = tonumber(redis.call('GET', key)) or 0
    reset = period_end - now
    if settled + inflight + amount > maximum then
      if settled + amount <= maximum then wait = -1 else wait = reset end
    end
  else
    local values = redis.call('HMGET', key, unpack(fields))
    local nums = {}
    for i = 1, buckets do
      nums[i] = tonumber(values[i]) or 0
      settled = settled + nums[i]
    end
    for i = buckets, 1, -1 do
      if nums[i] > 0 then reset = (cur + i) * bucket_ms - now break end
    end
    if amount > 0 then reset = (cur + buckets) * bucket_ms - now end
    if settled + inflight + amount > maximum then
      wait = -1
      local freed = 0
      for i = 1, buckets do
        freed = freed + nums[i]
        if settled - freed + inflight + amount <= maximum then
          wait = (cur + i) * bucket_ms - now
          break
        end
      end
    end
  end
  if settled + inflight + amount > maximum then admitted = 0 end
  checks[#checks + 1] = {kind, key, amount, amount_text}
  out[#out + 1] = settled
  out[#out + 1] = inflight
  out[#out + 1] = wait
  out[#out + 1] = reset
end

if mode == 'reserve' and admitted == 1 then
  for _, check in ipairs(checks) do
    if check[1] == 'w' and check[3] > 0 then
      bump(check[2], current, check[4], buckets, window_ttl)
    end
  end
  local record = {}
  local hold_base = first + n_checks * 6
  for h = 0, n_holds - 1 do
    local field = ARGV[hold_base + h * 2]
    local amount = ARGV[hold_base + h * 2 + 1]
    redis.call('HINCRBY', KEYS[3], field, amount)
    record[#record + 1] = field
    record[#record + 1] = amount
  end
  if #record > 0 then
    redis.call('HSET', KEYS[1], ARGV[3], table.concat(record, '|'))
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
    for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[5]) end
  end
end
table.insert(out, 1, admitted)
return out
"""
)

# KEYS: records, expiries, sums, then one key per target.
# ARGV: now_ms, id, current bucket name, buckets, window_ttl_ms, n_targets,
#       then per target: kind (t | p), key index, amount, expire-at ms (periods).
# Returns 1 when the reservation was still held, 0 when it had expired (or was
# settled already): its use is counted either way.
SETTLE: Final = (
    _COMMON
    + r"""
local current = ARGV[3]
local buckets = tonumber(ARGV[4])
local window_ttl = ARGV[5]
local n_targets = tonumber(ARGV[6])
local found = 0
if release(ARGV[2]) then found = 1 end
purge()
for t = 0, n_targets - 1 do
  local base = 7 + t * 4
  local kind = ARGV[base]
  local key = KEYS[tonumber(ARGV[base + 1])]
  local amount = ARGV[base + 2]
  if tonumber(amount) > 0 then
    if kind == 't' then
      bump(key, current, amount, buckets, window_ttl)
    else
      -- The period's end is fixed: its expiry is set once, when the key starts.
      if redis.call('INCRBY', key, amount) == tonumber(amount) then
        redis.call('PEXPIREAT', key, ARGV[base + 3])
      end
    end
  end
end
return found
"""
)
