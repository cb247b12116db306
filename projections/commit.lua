#!lua name=runplane_projections
-- The projector's one transaction: rows of several projection builds and their checkpoints,
-- all or nothing.
--
-- ARGV[1] = P, the number of builds. Then, per build i (KEYS[2i-1] its checkpoint key,
-- KEYS[2i] its projection's active pointer): the checkpoint it expects, the active pointer it
-- expects ("" for none), its new checkpoint, and its namespace if it becomes active ("" if not).
-- Then ARGV[2 + 4P]: the writes, a MessagePack array of groups {op, key index, {args...}}:
--   H: HSET key field value ...   D: HDEL key field ...
--   Z: ZADD key score member ...  R: ZREM key member ...
--
-- Optionally ARGV[3 + 4P], a fencing token, and the last KEYS entry, the lease that must hold
-- it: the writer's lease (``services.core.lease``).
--
-- Returns {"ok"}, or {"ok", "again"} if this batch is stored already (a client that lost the
-- reply and sent it again); {"fenced", key, holder} if the writer no longer holds its lease;
-- {"conflict", key, found} if a checkpoint moved (another writer); {"moved", key, found} if
-- readers were switched to another build. Nothing is written then.

local CHUNK = 1000
local COMMANDS = {H = 'HSET', D = 'HDEL', Z = 'ZADD', R = 'ZREM'}
local PAIRED = {H = true, Z = true}

local function commit(keys, args)
  local builds = tonumber(args[1])
  if #args == 3 + 4 * builds then
    local holder = redis.call('GET', keys[#keys]) or ''
    if holder ~= args[#args] then
      return {'fenced', keys[#keys], holder}
    end
  end
  local again = 0
  for i = 1, builds do
    local a = 2 + (i - 1) * 4
    local checkpoint = redis.call('GET', keys[2 * i - 1]) or '0-0'
    local active = redis.call('GET', keys[2 * i]) or ''
    if checkpoint == args[a + 2] and checkpoint ~= args[a]
        and (active == args[a + 1] or active == args[a + 3]) then
      again = again + 1  -- this very batch is stored already (a client resent it)
    elseif checkpoint ~= args[a] then
      return {'conflict', keys[2 * i - 1], checkpoint}
    elseif active ~= args[a + 1] then
      return {'moved', keys[2 * i], active}
    end
  end
  if again == builds then
    return {'ok', 'again'}
  elseif again > 0 then
    return {'conflict', 'several builds', 'stored in part'}
  end
  local groups = cmsgpack.unpack(args[2 + builds * 4])
  for _, group in ipairs(groups) do  -- check every group first: a script is not rolled back
    local step = PAIRED[group[1]] and 2 or 1
    if not COMMANDS[group[1]] or not keys[group[2]] or #group[3] % step ~= 0 then
      return redis.error_reply('bad write group ' .. tostring(group[1]))
    end
  end
  for _, group in ipairs(groups) do
    local command, key, values = COMMANDS[group[1]], keys[group[2]], group[3]
    for first = 1, #values, CHUNK do
      redis.call(command, key, unpack(values, first, math.min(first + CHUNK - 1, #values)))
    end
  end
  for b = 1, builds do
    local a = 2 + (b - 1) * 4
    redis.call('SET', keys[2 * b - 1], args[a + 2])
    if args[a + 3] ~= '' then
      redis.call('SET', keys[2 * b], args[a + 3])
    end
  end
  return {'ok'}
end

redis.register_function('runplane_project', commit)

-- The cooler's one step (services.projector.cooling): runs whose rows are in the cold rows'
-- segments leave Valkey, each run all at once in every build, and only if it is as the cooler
-- read it: each row it read still holds what it read (or is still missing), and each build is
-- still the one readers read. A run that moved meanwhile stays, whole.
--
-- ARGV[1] a MessagePack array, one item per run: {checks, actives, deletes} with
--   checks: {key index, field, 1 and the body it held | 0 and "" for a row that was missing}
--   actives: {key index (an active pointer), the namespace it must name}
--   deletes: {"D", key index, field} (HDEL) or {"R", key index, member} (ZREM)
-- Optionally ARGV[2], a fencing token, and the last KEYS entry, the lease that must hold it.
--
-- Returns {"ok", runs that left}, or {"fenced", key, holder}.
local function cool(keys, args)
  if #args == 2 then
    local holder = redis.call('GET', keys[#keys]) or ''
    if holder ~= args[2] then
      return {'fenced', keys[#keys], holder}
    end
  end
  local gone = 0
  for _, run in ipairs(cmsgpack.unpack(args[1])) do
    local same = true
    for _, check in ipairs(run[1]) do
      local found = redis.call('HGET', keys[check[1]], check[2])
      if (check[3] == 1 and found ~= check[4]) or (check[3] == 0 and found) then
        same = false
        break
      end
    end
    if same then
      for _, active in ipairs(run[2]) do
        if redis.call('GET', keys[active[1]]) ~= active[2] then
          same = false
          break
        end
      end
    end
    if same then
      for _, delete in ipairs(run[3]) do
        redis.call(delete[1] == 'D' and 'HDEL' or 'ZREM', keys[delete[2]], delete[3])
      end
      gone = gone + 1
    end
  end
  return {'ok', gone}
end

-- A cooled run's name out of the names the API reserved (events.keys.run_name), once its rows
-- (its name row among them) are in the cold rows: the API then finds the name there, for a
-- lookup and for a new run's name alike (services.api.runs). Only the key's own run's: a name
-- reserved again since, for another run, stays.
--
-- KEYS[1] the name's key. ARGV[1] the run id it must hold.
--
-- Returns 1 if it went, else 0.
local function forget_name(keys, args)
  if redis.call('GET', keys[1]) ~= args[1] then
    return 0
  end
  redis.call('DEL', keys[1])
  return 1
end

redis.register_function('runplane_cool', cool)
redis.register_function('runplane_forget_name', forget_name)
