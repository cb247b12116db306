#!lua name=runplane
-- The one way events enter the log. Atomic, so a crash or a lost race leaves nothing half
-- written.
--
-- KEYS[1] the partition's global stream, KEYS[2] the aggregate's own stream,
-- KEYS[3] the idempotency key, KEYS[4] the aggregate's told nodes (events.keys.told_nodes),
-- KEYS[5] the partition's retirements (events.keys.retired), KEYS[6] the fencing key
-- (only with a fencing token).
-- ARGV[1] expected version of the aggregate (-1: any), ARGV[2] idempotency TTL in ms,
-- ARGV[3] the fencing token ("" for none: the fencing key is then not read),
-- ARGV[4] the partition's inbox prefix (events.keys.inbox_prefix), ARGV[5] an inbox's
-- length at most (approximate trimming), ARGV[6] "1" where the first event may begin the
-- aggregate's history (events.model.begins_history), ARGV[7] the aggregate's bucket in the
-- retirements (events.keys.retirement_bucket), ARGV[8] that bucket's count as the writer read it
-- when it found the aggregate in no archived history ("" for none), ARGV[9..] the entries, as
-- (kind, body, route) triples; the route says which node inboxes get a copy (events/inbox.py).
--
-- Returns {"ok", positions, version} with positions space-separated and version the
-- aggregate's new version; {"dup", positions} when the key was seen (no event is written);
-- {"conflict", version} when the aggregate is not at the expected version; {"fenced", holder}
-- when a fencing token is given and the fencing key holds another (a deposed scheduler).
-- An aggregate with no stream may be one whose history went to the archive (runplane_retire2):
-- it takes no event until its stream is restored (runplane_restore2). Where its bucket counts
-- retirements, {"absent", count} asks the writer to look in the archive's index first
-- (services.core.retired) and to send the count back with the append if the aggregate is not
-- there; a retirement in the bucket meanwhile changes the count, and the writer looks again. A
-- field for the stream itself is a former version's record of it: {"retired", field, count}.
-- An event that begins a history is not asked (a run's submission: its id is new).
-- The entry id of the global stream is the log's clock: the server's, never the writer's.
-- Each entry also carries ``n``, the aggregate's version once the event is applied (1 for its
-- first event), so any consumer can tell an event it already folded from a gap. An inbox's
-- copy has the global entry's id and fields. The inboxes share the partition's hash tag, so
-- the one slot of KEYS holds them.

local function tell(prefix, maxlen, nodes, id, kind, body, n)
  for _, node in ipairs(nodes) do
    redis.call('XADD', prefix .. node, 'MAXLEN', '~', maxlen, id, 'k', kind, 'e', body, 'n', n)
  end
end

local function words(text)
  local found = {}
  for word in string.gmatch(text, '%S+') do
    found[#found + 1] = word
  end
  return found
end

local function append(keys, args)
  local seen = redis.call('GET', keys[3])
  if seen then
    -- A write all the same (the key's expiry renewed): a WAIT after this call then covers
    -- the first call's events, which came before it.
    redis.call('PEXPIRE', keys[3], args[2])
    return {'dup', seen}
  end
  if args[3] ~= '' then
    local holder = redis.call('GET', keys[6])
    if holder ~= args[3] then
      return {'fenced', holder or ''}
    end
  end
  local version = redis.call('XLEN', keys[2])
  if version == 0 then
    local count = redis.call('HGET', keys[5], args[7]) or ''
    local former = redis.call('HGET', keys[5], keys[2])
    if former then
      return {'retired', former, count}
    end
    if args[6] ~= '1' and count ~= args[8] then
      return {'absent', count}
    end
  end
  local expected = tonumber(args[1])
  if expected >= 0 and version ~= expected then
    return {'conflict', tostring(version)}
  end
  local positions = {}
  for i = 9, #args, 3 do
    local kind, body, route = args[i], args[i + 1], args[i + 2]
    local n = tostring(version + #positions + 1)
    local id = redis.call('XADD', keys[1], '*', 'k', kind, 'e', body, 'n', n)
    redis.call('XADD', keys[2], id, 'k', kind, 'e', body, 'n', n)
    positions[#positions + 1] = id
    local first = string.sub(route, 1, 1)
    if first == '@' then
      tell(args[4], args[5], {string.sub(route, 2)}, id, kind, body, n)
    elseif first ~= '!' then
      if first == '=' then
        redis.call('DEL', keys[4])
        local nodes = words(string.sub(route, 2))
        if #nodes > 0 then
          redis.call('SADD', keys[4], unpack(nodes))
        end
      end
      tell(args[4], args[5], redis.call('SMEMBERS', keys[4]), id, kind, body, n)
      if first == '-' then
        redis.call('DEL', keys[4])
      end
    end
  end
  local joined = table.concat(positions, ' ')
  redis.call('SET', keys[3], joined, 'PX', args[2])
  return {'ok', joined, tostring(version + #positions)}
end

-- The one way a history leaves the server, once the archive holds every entry of it and its
-- place in the archive's index of retired histories is written (services.core.archiver): the
-- aggregate's stream is deleted and its bucket's count in the partition's retirements raised,
-- together. The server keeps nothing else of it.
--
-- KEYS[1] the aggregate's own stream, KEYS[2] the partition's retirements.
-- ARGV[1] the stream's last entry as the archiver read it, ARGV[2] the aggregate's bucket.
--
-- Returns 1, or 0 (nothing done) if the stream moved since it was read: an event appended
-- meanwhile is not archived yet.
local function retire(keys, args)
  local last = redis.call('XREVRANGE', keys[1], '+', '-', 'COUNT', 1)
  if #last == 0 or last[1][1] ~= args[1] then
    return 0
  end
  redis.call('HINCRBY', keys[2], args[2], 1)
  redis.call('DEL', keys[1])
  return 1
end

-- A retired history's stream back, entry for entry as it was (ids, fields), from the archive:
-- the aggregate then takes events as before (services.core.store).
--
-- KEYS[1] the aggregate's own stream, KEYS[2] the partition's retirements.
-- ARGV[1] a former version's field for the stream as the restorer read it ("" for none),
-- ARGV[2] the aggregate's bucket, ARGV[3] its count as the restorer read it before it looked
-- in the archive ("" for none), then each entry as (id, number of field words, field, value,
-- ...), in order.
--
-- Returns 1, or 0 (nothing done) if the stream exists (another writer restored it) or the
-- field or the count moved since they were read: the history may have been restored, written
-- to and retired again meanwhile, and what the restorer read is then not all of it.
local function restore(keys, args)
  local former = redis.call('HGET', keys[2], keys[1]) or ''
  local count = redis.call('HGET', keys[2], args[2]) or ''
  if former ~= args[1] or count ~= args[3] or redis.call('XLEN', keys[1]) > 0 then
    return 0
  end
  local i = 4
  while i <= #args do
    local words = tonumber(args[i + 1])
    redis.call('XADD', keys[1], args[i], unpack(args, i + 2, i + 1 + words))
    i = i + 2 + words
  end
  redis.call('HDEL', keys[2], keys[1])
  return 1
end

-- The active scheduler's read of its partition's log through its consumer group, fenced as
-- its appends are: a deposed scheduler (paused past its lease, not aware yet) takes nothing from
-- the group, so its successor is given every entry (services.scheduler.app).
--
-- KEYS[1] the partition's fencing key, KEYS[2] the partition's global stream.
-- ARGV[1] the fencing token, ARGV[2] the group, ARGV[3] the consumer, ARGV[4] entries at most.
--
-- Returns XREADGROUP's reply (NOACK: nothing stays pending; nil when nothing is new), or
-- {"fenced", holder} when the fencing key holds another token.
local function read(keys, args)
  local holder = redis.call('GET', keys[1])
  if holder ~= args[1] then
    return {'fenced', holder or ''}
  end
  return redis.call(
    'XREADGROUP', 'GROUP', args[2], args[3], 'COUNT', args[4], 'NOACK', 'STREAMS', keys[2], '>'
  )
end

redis.register_function('runplane_append4', append)
redis.register_function('runplane_read', read)
redis.register_function('runplane_restore2', restore)
redis.register_function('runplane_retire2', retire)
