-- corral batches: the atomic transitions of a batch held in Redis (loaded by corral/batch.py).
-- One script, one operation per call, named by ARGV[1]; ARGV[2] is the batch key prefix
-- P = 'corral:batch:<id>'. Keys (TTL backstops; the retention period once the batch is over):
--   P            HASH  meta (caller, tenant, rules, template...) and counters:
--                      queued running succeeded failed cancelled unplaceable total
--   P..':pending' ZSET  index by dispatch order (never dispatched, or waiting for a retry)
--   P..':jobs'    HASH  index -> JSON record of the job's latest attempt (outcome, host, timing, tail)
--   P..':specs'   HASH  index -> JobTemplate JSON (file batches; an array keeps one template in meta)
--   P..':running' HASH  environment id -> index (attempts whose chain was sent and not yet finished)

local op, P = ARGV[1], ARGV[2]
local PENDING, JOBS, SPECS, RUNNING = P .. ':pending', P .. ':jobs', P .. ':specs', P .. ':running'

local function expire_all(ttl)
  for _, k in ipairs({P, PENDING, JOBS, SPECS, RUNNING}) do redis.call('PEXPIRE', k, ttl) end
end

-- The batch is over once nothing is pending or running: state 'finished' (or stays 'cancelled'),
-- keys kept for the retention period, and it leaves the dispatcher's active set.
local function settle(now, retention, active_key)
  if redis.call('ZCARD', PENDING) > 0 or redis.call('HLEN', RUNNING) > 0 then return 0 end
  if redis.call('HGET', P, 'state') == 'active' then redis.call('HSET', P, 'state', 'finished') end
  redis.call('HSET', P, 'finished_ms', now)
  redis.call('SREM', active_key, redis.call('HGET', P, 'id'))
  expire_all(retention)
  return 1
end

if op == 'submit' then
  -- ARGV: op, P, idem_key ('' none), batch id, ttl, index key, active key, created_ms,
  --       n_fields, field, value..., first index, last index, n_specs, index, spec...
  local idem, id, ttl, index_key, active_key, now = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
  if idem ~= '' then
    local existing = redis.call('GET', idem)
    if existing then return {'exists', existing} end
  end
  if redis.call('EXISTS', P) == 1 then return {'exists', id} end
  local i = 9
  local nf = tonumber(ARGV[i])
  for f = 1, nf do redis.call('HSET', P, ARGV[i + 2 * f - 1], ARGV[i + 2 * f]) end
  i = i + 2 * nf + 1
  local first, last = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local batch = {}
  for index = first, last do
    table.insert(batch, index)
    table.insert(batch, index)
    if #batch >= 2000 then redis.call('ZADD', PENDING, unpack(batch)) batch = {} end
  end
  if #batch > 0 then redis.call('ZADD', PENDING, unpack(batch)) end
  local ns = tonumber(ARGV[i + 2])
  for s = 1, ns do redis.call('HSET', SPECS, ARGV[i + 1 + 2 * s], ARGV[i + 2 + 2 * s]) end
  local total = last - first + 1
  redis.call('HSET', P, 'id', id, 'state', 'active', 'total', total, 'queued', total, 'running', 0,
             'succeeded', 0, 'failed', 0, 'cancelled', 0, 'unplaceable', 0, 'created_ms', now)
  expire_all(ttl)
  redis.call('ZADD', index_key, now, id)
  redis.call('SADD', active_key, id)
  if idem ~= '' then redis.call('SET', idem, id, 'PX', ttl) end
  return {'created', id}

elseif op == 'start' then
  -- A reservation succeeded: the index leaves pending, its attempt runs. ARGV: op, P, index, env id,
  -- job JSON, run key (corral:batchrun:<host>), batch id
  local index, env = ARGV[3], ARGV[4]
  if redis.call('HGET', P, 'state') ~= 'active' then return 0 end
  if redis.call('ZREM', PENDING, index) == 0 then return 0 end
  redis.call('HSET', RUNNING, env, index)
  redis.call('HSET', JOBS, index, ARGV[5])
  redis.call('HSET', ARGV[6], env, ARGV[7])
  redis.call('HINCRBY', P, 'queued', -1)
  redis.call('HINCRBY', P, 'running', 1)
  return 1

elseif op == 'finish' then
  -- An attempt ended. outcome: succeeded | failed | cancelled | retry (back to pending, a new attempt).
  -- ARGV: op, P, env id, index, outcome, job JSON, run key, now, retention, active key
  local env, index, outcome = ARGV[3], ARGV[4], ARGV[5]
  if redis.call('HDEL', RUNNING, env) == 0 then return -1 end  -- already finished: once only
  redis.call('HDEL', ARGV[7], env)
  redis.call('HSET', JOBS, index, ARGV[6])
  redis.call('HINCRBY', P, 'running', -1)
  if outcome == 'retry' and redis.call('HGET', P, 'state') == 'active' then
    redis.call('ZADD', PENDING, tonumber(index), index)
    redis.call('HINCRBY', P, 'queued', 1)
  else
    if outcome == 'retry' then outcome = 'cancelled' end
    redis.call('HINCRBY', P, outcome, 1)
  end
  return settle(tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10])

elseif op == 'unplaceable' then
  -- A pending index no host could ever fit: it fails without running. ARGV: op, P, index, job JSON,
  -- now, retention, active key
  if redis.call('ZREM', PENDING, ARGV[3]) == 0 then return -1 end
  redis.call('HSET', JOBS, ARGV[3], ARGV[4])
  redis.call('HINCRBY', P, 'queued', -1)
  redis.call('HINCRBY', P, 'failed', 1)
  redis.call('HINCRBY', P, 'unplaceable', 1)
  return settle(tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])

elseif op == 'cancel' then
  -- Pending jobs are cancelled now; running ones are terminated by their hosts' reaper and count as
  -- cancelled when they end. ARGV: op, P, reason, now, retention, active key
  local state = redis.call('HGET', P, 'state')
  if state ~= 'active' then return {state or 'missing'} end
  local n = redis.call('ZCARD', PENDING)
  redis.call('DEL', PENDING)
  -- 0 - n, not -n: Lua's -0 reaches Redis as '-0', which HINCRBY refuses (every job running).
  redis.call('HINCRBY', P, 'queued', 0 - n)
  redis.call('HINCRBY', P, 'cancelled', n)
  redis.call('HSET', P, 'state', 'cancelled', 'cancel_reason', ARGV[3])
  settle(tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
  return {'cancelled', tostring(n)}

elseif op == 'requeue' then
  -- retry --failed: failed indices go back to pending with a fresh attempt budget.
  -- ARGV: op, P, ttl, active key, index, job JSON, ...
  local ttl, active_key = tonumber(ARGV[3]), ARGV[4]
  local n = 0
  for i = 5, #ARGV, 2 do
    redis.call('ZADD', PENDING, tonumber(ARGV[i]), ARGV[i])
    redis.call('HSET', JOBS, ARGV[i], ARGV[i + 1])
    n = n + 1
  end
  if n == 0 then return 0 end
  redis.call('HINCRBY', P, 'failed', -n)
  redis.call('HINCRBY', P, 'queued', n)
  redis.call('HSET', P, 'state', 'active', 'unplaceable', 0)
  redis.call('HDEL', P, 'finished_ms')
  redis.call('SADD', active_key, redis.call('HGET', P, 'id'))
  expire_all(ttl)
  return n
end
return redis.error_reply('unknown batch operation ' .. tostring(op))
