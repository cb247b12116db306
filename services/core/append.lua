#!lua name=runplane
-- The one way events enter the log. Atomic, so a crash or a lost race leaves nothing half
-- written.
--
-- KEYS[1] the partition's global stream, KEYS[2] the aggregate's own stream,
-- KEYS[3] the idempotency key, KEYS[4] the fencing key (only with a fencing token).
-- ARGV[1] expected version of the aggregate (-1: any), ARGV[2] idempotency TTL in ms,
-- ARGV[3] the fencing token ("" for none: the fencing key is then not read),
-- ARGV[4..] the entries, as (kind, body) pairs.
--
-- Returns {"ok", positions, version} with positions space-separated and version the
-- aggregate's new version; {"dup", positions} when the key was seen (nothing is written);
-- {"conflict", version} when the aggregate is not at the expected version; {"fenced", holder}
-- when a fencing token is given and the fencing key holds another (a deposed scheduler).
-- The entry id of the global stream is the log's clock: the server's, never the writer's.
-- Each entry also carries ``n``, the aggregate's version once the event is applied (1 for its
-- first event), so any consumer can tell an event it already folded from a gap.

local function append(keys, args)
  local seen = redis.call('GET', keys[3])
  if seen then
    return {'dup', seen}
  end
  if args[3] ~= '' then
    local holder = redis.call('GET', keys[4])
    if holder ~= args[3] then
      return {'fenced', holder or ''}
    end
  end
  local version = redis.call('XLEN', keys[2])
  local expected = tonumber(args[1])
  if expected >= 0 and version ~= expected then
    return {'conflict', tostring(version)}
  end
  local positions = {}
  for i = 4, #args, 2 do
    local n = tostring(version + #positions + 1)
    local id = redis.call('XADD', keys[1], '*', 'k', args[i], 'e', args[i + 1], 'n', n)
    redis.call('XADD', keys[2], id, 'k', args[i], 'e', args[i + 1], 'n', n)
    positions[#positions + 1] = id
  end
  local joined = table.concat(positions, ' ')
  redis.call('SET', keys[3], joined, 'PX', args[2])
  return {'ok', joined, tostring(version + #positions)}
end

redis.register_function('runplane_append', append)
