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
--   P..'load'          ZSET host by its share in use (millionths)     the spread index, kept with 'used'
--   P..'capmax'        HASH s|c|m -> the largest capacity published   bounds the spread walk
--
-- spread walks the 'load' index from the least loaded host and stops as soon as no later host can
-- score better (its share in use plus the smallest increment this job could add on any host), so a
-- decision on a fleet with room reads a handful of hosts, not all of them; binpack, and a walk that
-- found nothing (the queued reason counts every candidate), read each candidate (two HMGETs).
-- The reserve call first returns the capacity of expired leases (a client that reserved and died),
-- a bounded number per call, so the sweep costs O(expired).

local op, P = ARGV[1], ARGV[2]
local ALLOCS, LEASES, CAPS, USED = P .. 'allocs', P .. 'leases', P .. 'capacity', P .. 'used'
local LOAD, CAPMAX = P .. 'load', P .. 'capmax'

local function triple(v)
  if not v then return 0, 0, 0 end
  local a, b, c = string.match(v, '^(%-?%d+),(%-?%d+),(%-?%d+)')
  return tonumber(a) or 0, tonumber(b) or 0, tonumber(c) or 0
end

local function share(s, c, m, cs, cc, cm)
  return (s / math.max(cs, 1) + c / math.max(cc, 1) + m / math.max(cm, 1)) / 3
end

local function index_load(host, s, c, m, cap)
  -- the spread index: the host's share in use, floored to millionths (exact as a Redis score)
  local cs, cc, cm = string.match(cap or '', '^(%d+),(%d+),(%d+),')
  if not cs then return end
  redis.call('ZADD', LOAD, math.floor(share(s, c, m, tonumber(cs), tonumber(cc), tonumber(cm)) * 1e6), host)
end

local function add_used(host, slots, cpus, mem, ttl)
  local s, c, m = triple(redis.call('HGET', USED, host))
  s, c, m = s + slots, c + cpus, m + mem
  redis.call('HSET', USED, host, s .. ',' .. c .. ',' .. m)
  index_load(host, s, c, m, redis.call('HGET', CAPS, host))
  if ttl then redis.call('PEXPIRE', USED, ttl) redis.call('PEXPIRE', LOAD, ttl) end
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

-- The hosts a decision may use, in preference order (the first npref need no approved gap and win
-- ties against the others), from ARGV at 'at': n, host * n, npref; or -1, the key of a ZSET of the
-- candidates by rank (written once by the caller for many decisions: no host list per call), npref.
-- Returns {n, npref, rank(host) -> rank or nil, list() -> hosts in order}, or nil for a key that is gone.
local function candidates(at)
  local n = tonumber(ARGV[at])
  if n >= 0 then
    local list, rank = {}, {}
    for i = 1, n do
      local h = ARGV[at + i]
      list[i], rank[h] = h, i
    end
    return {n = n, npref = tonumber(ARGV[at + n + 1]) or n, rank = function(h) return rank[h] end,
            list = function() return list end}
  end
  local key = ARGV[at + 1]
  local count = redis.call('ZCARD', key)
  if count == 0 then return nil end
  local ranks, asked = nil, 0
  local function rank(h)  -- a few single lookups; past those, the whole set at once
    if ranks then return ranks[h] end
    asked = asked + 1
    if asked <= 8 then return tonumber(redis.call('ZSCORE', key, h)) end
    ranks = {}
    local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for j = 1, #all, 2 do ranks[all[j]] = tonumber(all[j + 1]) end
    return ranks[h]
  end
  return {n = count, npref = tonumber(ARGV[at + 2]) or count, rank = rank,
          list = function() return redis.call('ZRANGE', key, 0, -1) end}
end

-- One host judged for one job: its share in use once the job is placed (the score), or nil with
-- the reason counted; the second result says the host is down.
local function judge(cap, used, cpus, mem, now, why)
  local cs, cc, cm, expires
  if cap then cs, cc, cm, expires = string.match(cap, '^(%d+),(%d+),(%d+),(%d+)$') end
  if not expires or tonumber(expires) < now then
    why.down = why.down + 1
    return nil, true
  end
  cs, cc, cm = tonumber(cs), tonumber(cc), tonumber(cm)
  local us, uc, um = triple(used)
  if cpus > cc or mem > cm or cs < 1 then
    why.too_small = why.too_small + 1
  elseif us + 1 > cs then
    why.full = why.full + 1
  elseif uc + cpus > cc then
    why.cpu_short = why.cpu_short + 1
  elseif um + mem > cm then
    why.mem_short = why.mem_short + 1
  else
    -- Share of each resource in use once this job is placed; spread takes the least loaded host
    -- (Kubernetes' LeastAllocated), binpack the most loaded one that fits (MostAllocated).
    return share(us + 1, uc + cpus, um + mem, cs, cc, cm), false
  end
  return nil, false
end

-- spread over the 'load' index, least loaded first. A host's post-placement share is at least its
-- indexed share plus the job's increment on the largest host ('capmax'), so once that bound reaches
-- the best score found no later host can do better. It reads at most two chunks (8, then 16 hosts;
-- the second only once a host fits): past those the fleet is nearly full (or the least loaded hosts
-- are not candidates) and reading every other candidate at once is cheaper. Returns the best host so far (or nil), its score and
-- preference, and the set of candidates judged (nil when it stopped early: the best is final).
local function walk(cand, cpus, mem, now, why)
  local mx = redis.call('HMGET', CAPMAX, 's', 'c', 'm')
  local inc = 0  -- without the largest capacity known, no bound: the walk reads every candidate
  if mx[1] and mx[2] and mx[3] then inc = share(1, cpus, mem, tonumber(mx[1]), tonumber(mx[2]), tonumber(mx[3])) end
  local seen, nseen, pos, size = {}, 0, 0, 8
  local best, best_post, best_pref = nil, nil, false
  for round = 1, 2 do
    if nseen >= cand.n or (round == 2 and not best) then break end
    local chunk = redis.call('ZRANGE', LOAD, pos, pos + size - 1, 'WITHSCORES')
    if #chunk == 0 then break end
    pos, size = pos + size, 16
    local names, lows, ranks = {}, {}, {}
    for j = 1, #chunk, 2 do
      local h = chunk[j]
      local r = not seen[h] and cand.rank(h)
      if r then
        names[#names + 1] = h
        lows[#names], ranks[#names] = tonumber(chunk[j + 1]) / 1e6 + inc, r
      end
    end
    if #names > 0 then
      local caps = redis.call('HMGET', CAPS, unpack(names))
      local useds = redis.call('HMGET', USED, unpack(names))
      for k = 1, #names do
        if best and (lows[k] > best_post or (best_pref and lows[k] >= best_post - 1e-6)) then
          return best, best_post, best_pref, nil, nseen
        end
        local h = names[k]
        seen[h], nseen = true, nseen + 1
        local post, down = judge(caps[k], useds[k], cpus, mem, now, why)
        if down then redis.call('ZREM', LOAD, h) end  -- its next heartbeat indexes it again
        local pref = ranks[k] <= cand.npref
        if post and (best == nil or post < best_post or (post == best_post and pref and not best_pref)) then
          best, best_post, best_pref = h, post, pref
        end
      end
    end
  end
  return best, best_post, best_pref, seen, nseen
end

-- Every listed candidate judged (binpack; what the spread walk left): ties go to the earlier.
-- Returns the best host (or nil) and its score (spread: minus the share).
local function scan(list, mode, cpus, mem, now, why)
  if #list == 0 then return nil, nil end
  local caps = redis.call('HMGET', CAPS, unpack(list))
  local useds = redis.call('HMGET', USED, unpack(list))
  local best, best_score = nil, nil
  for i = 1, #list do
    local post = judge(caps[i], useds[i], cpus, mem, now, why)
    if post then
      local score = mode == 'binpack' and post or -post
      if best_score == nil or score > best_score then best, best_score = list[i], score end
    end
  end
  return best, best_score
end

-- One decision: the host reserved ({'ok', host}) or why nothing fits ({'queued', counts...}).
local function decide(env, cpus, mem, mode, cand, now, lease, ttl)
  local held = redis.call('HGET', ALLOCS, env)
  if held then  -- a repeated reservation (a retried request) gets the same host, never a second one
    if redis.call('ZSCORE', LEASES, env) then redis.call('ZADD', LEASES, now + lease, env) end
    return {'ok', string.match(held, '^(.*),%-?%d+,%-?%d+$')}
  end
  local why = {down = 0, full = 0, cpu_short = 0, mem_short = 0, too_small = 0}
  local best
  if mode == 'binpack' then
    best = scan(cand.list(), mode, cpus, mem, now, why)
  else
    local post, pref, seen, nseen
    best, post, pref, seen, nseen = walk(cand, cpus, mem, now, why)
    if seen and nseen < cand.n then
      local rest = {}
      for _, h in ipairs(cand.list()) do if not seen[h] then rest[#rest + 1] = h end end
      if best then why = {down = 0, full = 0, cpu_short = 0, mem_short = 0, too_small = 0} end
      local other, score = scan(rest, mode, cpus, mem, now, why)
      if other and (best == nil or -score < post or (-score == post and cand.rank(other) <= cand.npref and not pref)) then
        best = other
      end
    end
  end
  if best == nil then
    return {'queued', tostring(why.down), tostring(why.full), tostring(why.cpu_short), tostring(why.mem_short),
            tostring(why.too_small)}
  end
  allocate(env, best, cpus, mem, ttl)
  redis.call('ZADD', LEASES, now + lease, env)
  redis.call('PEXPIRE', LEASES, ttl)
  return {'ok', best}
end

if op == 'reserve' then
  -- ARGV: op, P, now, lease_ms, ttl_ms, env, cpus_m, mem_mb, mode, candidates (see above)
  local now, lease, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local env, cpus, mem, mode = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
  local cand = candidates(10)
  if not cand then return {'nocands'} end
  expire_leases(now)
  return decide(env, cpus, mem, mode, cand, now, lease, ttl)

elseif op == 'reserve_many' then
  -- Several jobs over the same candidates in one call (the batch dispatcher): each decided as by
  -- 'reserve', in order, stopping after the first that must wait (one larger than every host does
  -- not stop the others). ARGV: op, P, now, lease_ms, ttl_ms, mode, m, (env, cpus_m, mem_mb) * m,
  -- candidates (see above)
  local now, lease, ttl, mode, m = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
  local cand = candidates(8 + 3 * m)
  if not cand then return {{'nocands'}} end
  expire_leases(now)
  local out = {}
  for j = 1, m do
    local o = 8 + (j - 1) * 3
    local got = decide(ARGV[o], tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), mode, cand, now, lease, ttl)
    out[j] = got
    if got[1] == 'queued' and not (got[6] ~= '0' and got[2] == '0' and got[3] == '0' and got[4] == '0' and got[5] == '0') then
      break
    end
  end
  return out

elseif op == 'publish' then
  -- A host's capacity, with its heartbeat; it (re)enters the spread index. ARGV: op, P, ttl_ms, host,
  -- slots, cpus_m, mem_mb, expires_ms
  local ttl, host, cs, cc, cm = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local cap = cs .. ',' .. cc .. ',' .. cm .. ',' .. ARGV[8]
  redis.call('HSET', CAPS, host, cap)
  local mx = redis.call('HMGET', CAPMAX, 's', 'c', 'm')
  redis.call('HSET', CAPMAX, 's', math.max(cs, tonumber(mx[1]) or 0), 'c', math.max(cc, tonumber(mx[2]) or 0),
             'm', math.max(cm, tonumber(mx[3]) or 0))
  local s, c, m = triple(redis.call('HGET', USED, host))
  index_load(host, s, c, m, cap)
  for _, k in ipairs({CAPS, CAPMAX, LOAD}) do redis.call('PEXPIRE', k, ttl) end
  return 1

elseif op == 'renew' then
  -- The host still has chains to run (queued or in its pool): the reservations placed on it that no
  -- session confirmed yet are kept, so a chain waiting longer than the lease still finds its room.
  -- Only extends (XX GT). ARGV: op, P, host, now, lease_ms
  local until_ms, n = tonumber(ARGV[4]) + tonumber(ARGV[5]), 0
  for _, env in ipairs(redis.call('SMEMBERS', P .. 'alloc:' .. ARGV[3])) do
    n = n + redis.call('ZADD', LEASES, 'XX', 'GT', 'CH', until_ms, env)
  end
  return n

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
