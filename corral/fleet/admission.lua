-- corral admission: filter -> score -> atomic reservation, and the transitions of an allocation.
-- One script (loaded by corral/admission.py), one operation per call, named by ARGV[1].
--
-- Keys (prefix P = ARGV[2], every one with a TTL backstop):
--   P..'capacity'      HASH host -> 'slots,cpus_m,mem_mb,expires_ms'  written with each heartbeat; a
--                                  record past its expiry is a host that went silent (down)
--   P..'used'          HASH host -> 'slots,cpus_m,mem_mb'             the sum of the host's allocations
--   P..'alloc:'..host  SET  environment ids                           the host's allocations (reconciler)
--   P..'allocs'        HASH env id -> 'host,cpus_m,mem_mb'
--   P..'leases'        ZSET env id by lease expiry                    reservations no session confirmed yet
--
-- A decision reads every candidate's capacity and usage with two HMGETs (not two calls per host),
-- so its cost grows with the candidates' count in Lua, not in Redis round trips.
-- The reserve call first returns the capacity of expired leases (a client that reserved and died),
-- a bounded number per call, so the sweep costs O(expired).

local op, P = ARGV[1], ARGV[2]
local ALLOCS, LEASES, CAPS, USED = P .. 'allocs', P .. 'leases', P .. 'capacity', P .. 'used'

local function triple(v)
  if not v then return 0, 0, 0 end
  local a, b, c = string.match(v, '^(%-?%d+),(%-?%d+),(%-?%d+)')
  return tonumber(a) or 0, tonumber(b) or 0, tonumber(c) or 0
end

local function add_used(host, slots, cpus, mem, ttl)
  local s, c, m = triple(redis.call('HGET', USED, host))
  redis.call('HSET', USED, host, (s + slots) .. ',' .. (c + cpus) .. ',' .. (m + mem))
  if ttl then redis.call('PEXPIRE', USED, ttl) end
end

local function release(env)
  local rec = redis.call('HGET', ALLOCS, env)
  redis.call('ZREM', LEASES, env)
  if not rec then return 0 end
  local host, cpus, mem = string.match(rec, '^(.*),(%-?%d+),(%-?%d+)$')
  redis.call('HDEL', ALLOCS, env)
  if host then
    redis.call('SREM', P .. 'alloc:' .. host, env)
    add_used(host, -1, -tonumber(cpus), -tonumber(mem), nil)
  end
  return 1
end

local function allocate(env, host, cpus, mem, ttl)
  redis.call('HSET', ALLOCS, env, host .. ',' .. cpus .. ',' .. mem)
  redis.call('PEXPIRE', ALLOCS, ttl)
  redis.call('SADD', P .. 'alloc:' .. host, env)
  redis.call('PEXPIRE', P .. 'alloc:' .. host, ttl)
  add_used(host, 1, cpus, mem, ttl)
end

local function expire_leases(now)
  local due = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 100)
  for _, env in ipairs(due) do release(env) end
  return #due
end

if op == 'reserve' then
  -- ARGV: op, P, now, lease_ms, ttl_ms, env, cpus_m, mem_mb, mode, n, host...
  local now, lease, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local env, cpus, mem, mode, n = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
  expire_leases(now)
  local held = redis.call('HGET', ALLOCS, env)
  if held then  -- a repeated reservation (a retried request) gets the same host, never a second one
    if redis.call('ZSCORE', LEASES, env) then redis.call('ZADD', LEASES, now + lease, env) end
    return {'ok', string.match(held, '^(.*),%-?%d+,%-?%d+$')}
  end
  local down, full, cpu_short, mem_short, too_small = 0, 0, 0, 0, 0
  local best, best_score = nil, nil
  local hosts = {}
  for i = 1, n do hosts[i] = ARGV[10 + i] end
  local caps = n > 0 and redis.call('HMGET', CAPS, unpack(hosts)) or {}
  local useds = n > 0 and redis.call('HMGET', USED, unpack(hosts)) or {}
  for i = 1, n do
    local host, cap = hosts[i], caps[i]
    local cs, cc, cm, expires
    if cap then cs, cc, cm, expires = string.match(cap, '^(%d+),(%d+),(%d+),(%d+)$') end
    if not expires or tonumber(expires) < now then
      down = down + 1
    else
      cs, cc, cm = tonumber(cs), tonumber(cc), tonumber(cm)
      local us, uc, um = triple(useds[i])
      if cpus > cc or mem > cm or cs < 1 then
        too_small = too_small + 1
      elseif us + 1 > cs then
        full = full + 1
      elseif uc + cpus > cc then
        cpu_short = cpu_short + 1
      elseif um + mem > cm then
        mem_short = mem_short + 1
      else
        -- Share of each resource in use once this job is placed; spread takes the least loaded host
        -- (Kubernetes' LeastAllocated), binpack the most loaded one that fits (MostAllocated).
        local share = ((us + 1) / cs + (uc + cpus) / math.max(cc, 1) + (um + mem) / math.max(cm, 1)) / 3
        local score = mode == 'binpack' and share or -share
        if best_score == nil or score > best_score then best, best_score = host, score end
      end
    end
  end
  if best == nil then
    return {'queued', tostring(down), tostring(full), tostring(cpu_short), tostring(mem_short), tostring(too_small)}
  end
  allocate(env, best, cpus, mem, ttl)
  redis.call('ZADD', LEASES, now + lease, env)
  redis.call('PEXPIRE', LEASES, ttl)
  return {'ok', best}

elseif op == 'confirm' then
  -- A session now holds the allocation: the lease goes. Without one (its lease expired, or the chain
  -- was sent without a reservation) the allocation is recorded anyway, so the accounting follows
  -- what really runs. ARGV: op, P, ttl_ms, env, host, cpus_m, mem_mb
  local ttl, env, host = tonumber(ARGV[3]), ARGV[4], ARGV[5]
  local held = redis.call('HGET', ALLOCS, env)
  if held and string.match(held, '^(.*),%-?%d+,%-?%d+$') == host then
    redis.call('ZREM', LEASES, env)
    return 1
  end
  if held then release(env) end
  allocate(env, host, tonumber(ARGV[6]), tonumber(ARGV[7]), ttl)
  return 0

elseif op == 'exited' then
  -- The process ended: its CPUs and memory are free, its slot stays taken until cleanup (a stopped
  -- sandbox still counts against the host's sandboxes). ARGV: op, P, env
  local rec = redis.call('HGET', ALLOCS, ARGV[3])
  if not rec then return 0 end
  local host, cpus, mem = string.match(rec, '^(.*),(%-?%d+),(%-?%d+)$')
  if not host or (tonumber(cpus) == 0 and tonumber(mem) == 0) then return 0 end
  add_used(host, 0, -tonumber(cpus), -tonumber(mem), nil)
  redis.call('HSET', ALLOCS, ARGV[3], host .. ',0,0')
  return 1

elseif op == 'release' then
  -- ARGV: op, P, env, only_leased ('1': release only a reservation no session confirmed)
  local env = ARGV[3]
  if ARGV[4] == '1' and not redis.call('ZSCORE', LEASES, env) then return 0 end
  return release(env)

elseif op == 'gc' then
  -- The reconciler: release this host's allocations whose session record is gone or cleaned and
  -- that no live lease covers. ARGV: op, P, host, now, session key prefix
  local host, now, sprefix = ARGV[3], tonumber(ARGV[4]), ARGV[5]
  expire_leases(now)
  local freed = {}
  for _, env in ipairs(redis.call('SMEMBERS', P .. 'alloc:' .. host)) do
    local state = redis.call('HGET', sprefix .. env, 'state')
    if (not state or state == 'cleaned') and not redis.call('ZSCORE', LEASES, env) then
      release(env)
      table.insert(freed, env)
    end
  end
  return freed
end
return redis.error_reply('unknown admission operation ' .. tostring(op))
