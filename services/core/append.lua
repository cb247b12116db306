#!lua name=runplane
-- The one way events enter the log. Atomic, so a crash or a lost race leaves nothing half
-- written.
--
-- KEYS[1] the partition's global stream, KEYS[2] the aggregate's own stream,
-- KEYS[3] the idempotency key, KEYS[4] the aggregate's told nodes (events.keys.told_nodes),
-- KEYS[5] the partition's retired histories (events.keys.retired), KEYS[6] the fencing key
-- (only with a fencing token).
-- ARGV[1] expected version of the aggregate (-1: any), ARGV[2] idempotency TTL in ms,
-- ARGV[3] the fencing token ("" for none: the fencing key is then not read),
-- ARGV[4] the partition's inbox prefix (events.keys.inbox_prefix), ARGV[5] an inbox's
-- length at most (approximate trimming), ARGV[6..] the entries, as (kind, body, route)
-- triples; the route says which node inboxes get a copy (events/inbox.py).
--
-- Returns {"ok", positions, version} with positions space-separated and version the
-- aggregate's new version; {"dup", positions} when the key was seen (no event is written);
-- {"conflict", version} when the aggregate is not at the expected version; {"fenced", holder}
-- when a fencing token is given and the fencing key holds another (a deposed scheduler).
-- An aggregate whose history went to the archive (runplane_retire) takes no event until its
-- stream is restored (runplane_restore): {"retired", field} says so, and nothing is written.
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
    local retired = redis.call('HGET', keys[5], keys[2])
    if retired then
      return {'retired', retired}
    end
  end
  local expected = tonumber(args[1])
  if expected >= 0 and version ~= expected then
    return {'conflict', tostring(version)}
  end
  local positions = {}
  for i = 6, #args, 3 do
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

-- The one way a history leaves the server, once the archive holds every entry of it
-- (services.core.archiver): the aggregate's stream is deleted and its field in the partition's
-- retired histories set, together.
--
-- KEYS[1] the aggregate's own stream, KEYS[2] the partition's retired histories.
-- ARGV[1] the stream's last entry as the archiver read it, ARGV[2] the field's value:
-- "<version> <segment> <segment> ...", the aggregate's version and the archive's segments that
-- hold its events (their places in the manifest, which only ever grows).
--
-- Returns 1, or 0 (nothing done) if the stream moved since it was read: an event appended
-- meanwhile is not archived yet.
local function retire(keys, args)
  local last = redis.call('XREVRANGE', keys[1], '+', '-', 'COUNT', 1)
  if #last == 0 or last[1][1] ~= args[1] then
    return 0
  end
  redis.call('HSET', keys[2], keys[1], args[2])
  redis.call('DEL', keys[1])
  return 1
end

-- A retired history's stream back, entry for entry as it was (ids, fields), from the archive,
-- and its field gone: the aggregate then takes events as before (services.core.store).
--
-- KEYS[1] the aggregate's own stream, KEYS[2] the partition's retired histories.
-- ARGV[1] the field as the restorer read it, then each entry as (id, number of field words,
-- field, value, ...), in order.
--
-- Returns 1, or 0 (nothing done) if the field moved since it was read or the stream exists.
local function restore(keys, args)
  if redis.call('HGET', keys[2], keys[1]) ~= args[1] or redis.call('XLEN', keys[1]) > 0 then
    return 0
  end
  local i = 2
  while i <= #args do
    local count = tonumber(args[i + 1])
    redis.call('XADD', keys[1], args[i], unpack(args, i + 2, i + 1 + count))
    i = i + 2 + count
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

redis.register_function('runplane_append3', append)
redis.register_function('runplane_read', read)
redis.register_function('runplane_restore', restore)
redis.register_function('runplane_retire', retire)
