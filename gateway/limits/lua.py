"""The limiter's Lua scripts for Redis, loaded once per server (SCRIPT LOAD) and
run with EVALSHA. Each script touches only the keys it is given, all of one
tenant's hash tag (see gateway.limits.keys), so it runs atomically on a single
server or on the one Redis Cluster node that owns the tenant's slot.

Redis' Lua numbers are doubles: amounts are passed and written as strings
(`int()` below), never through tostring(), which would print 1e+15.
:mod:`gateway.limits.memory` implements the same steps in Python for a single
replica; the tests run one suite against both.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = r"""
local now = tonumber(ARGV[1])
local function int(n) return string.format('%.0f', n) end

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

-- Count `amount` in the current bucket of a sliding-window hash; drop old buckets.
local function bump(key, cur, amount, buckets, ttl)
  redis.call('HINCRBY', key, int(cur), int(amount))
  redis.call('PEXPIRE', key, ttl)
  if redis.call('HLEN', key) > buckets + 2 then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if tonumber(f) <= cur - buckets then redis.call('HDEL', key, f) end
    end
  end
end
"""

# KEYS: records, expiries, sums, then one key per check.
# ARGV: now_ms, mode (reserve | status), id, expires_ms, state_ttl_ms, bucket_ms,
#       buckets, window_ttl_ms, n_checks, n_holds,
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
purge()

local fields = {}
for i = buckets - 1, 0, -1 do fields[#fields + 1] = int(cur - i) end

local admitted = 1
local out = {}
local checks = {}
for c = 0, n_checks - 1 do
  local base = 11 + c * 6
  local kind = ARGV[base]
  local key = KEYS[tonumber(ARGV[base + 1])]
  local maximum = tonumber(ARGV[base + 2])
  local amount = tonumber(ARGV[base + 3])
  local field = ARGV[base + 4]
  local period_end = tonumber(ARGV[base + 5])
  local inflight = 0
  if field ~= '' then inflight = tonumber(redis.call('HGET', KEYS[3], field)) or 0 end
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
  checks[#checks + 1] = {kind, key, amount}
  out[#out + 1] = int(settled)
  out[#out + 1] = int(inflight)
  out[#out + 1] = int(wait)
  out[#out + 1] = int(reset)
end

if mode == 'reserve' and admitted == 1 then
  for _, check in ipairs(checks) do
    if check[1] == 'w' and check[3] > 0 then
      bump(check[2], cur, check[3], buckets, window_ttl)
    end
  end
  local record = {}
  local hold_base = 11 + n_checks * 6
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
# ARGV: now_ms, id, bucket_ms, buckets, window_ttl_ms, period_grace_ms, n_targets,
#       then per target: kind (t | p), key index, amount, period end ms.
# Returns 1 when the reservation was still held, 0 when it had expired (or was
# settled already): its use is counted either way.
SETTLE: Final = (
    _COMMON
    + r"""
local bucket_ms = tonumber(ARGV[3])
local buckets = tonumber(ARGV[4])
local window_ttl = ARGV[5]
local grace = tonumber(ARGV[6])
local n_targets = tonumber(ARGV[7])
local cur = math.floor(now / bucket_ms)
local found = 0
if release(ARGV[2]) then found = 1 end
purge()
for t = 0, n_targets - 1 do
  local base = 8 + t * 4
  local kind = ARGV[base]
  local key = KEYS[tonumber(ARGV[base + 1])]
  local amount = ARGV[base + 2]
  if tonumber(amount) > 0 then
    if kind == 't' then
      bump(key, cur, tonumber(amount), buckets, window_ttl)
    else
      redis.call('INCRBY', key, amount)
      redis.call('PEXPIREAT', key, int(tonumber(ARGV[base + 3]) + grace))
    end
  end
end
return found
"""
)
