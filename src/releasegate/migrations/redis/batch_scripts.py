"""The Lua scripts behind the Redis key helpers: one SCAN page changed per atomic call.

Each script also moves the step's checkpoint (cursor, run id, pass, counts) in the same
call as the data, so the checkpoint never runs ahead of what was changed.
"""

from __future__ import annotations

# Lua: one page of atomic compare-and-move (or in-place rewrite) of string keys: a key
# moves only if it still holds the value the new one was computed from; RENAMENX keeps its
# TTL and refuses to overwrite, SET KEEPTTL puts the new value in.
# KEYS: checkpoint, then (old, new) pairs. ARGV: field prefix, next cursor, run id, pass,
# overwrite flag, then (expected old value, new value) pairs.
MOVE_LUA = """
local p, overwrite = ARGV[1], ARGV[5]
local moved, gone, raced, conflicts = 0, 0, 0, 0
local failed, clashed = {}, {}
local n = (#KEYS - 1) / 2
local sources, currents = {}, {}
for i = 1, n do sources[i] = KEYS[2 * i] end
local first = 1
while first <= n do
  local last = math.min(first + 499, n)
  local values = redis.call('MGET', unpack(sources, first, last))
  for i = first, last do currents[i] = values[i - first + 1] end
  first = last + 1
end
for i = 1, n do
  local src, dst = sources[i], KEYS[2 * i + 1]
  local expected, value = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local current = currents[i]
  if current == false and redis.call('EXISTS', src) == 0 then
    gone = gone + 1
  elseif current ~= expected then
    raced = raced + 1
    failed[#failed + 1] = i
  elseif src == dst then
    redis.call('SET', dst, value, 'KEEPTTL')
    moved = moved + 1
  elseif overwrite == '1' or redis.call('RENAMENX', src, dst) == 1 then
    -- The key moves with its TTL, then gets its new value in the same atomic step.
    if overwrite == '1' then redis.call('RENAME', src, dst) end
    redis.call('SET', dst, value, 'KEEPTTL')
    moved = moved + 1
  else
    conflicts = conflicts + 1
    clashed[#clashed + 1] = i
  end
end
redis.call('HSET', KEYS[1], p .. 'cursor', ARGV[2], p .. 'run', ARGV[3], p .. 'pass', ARGV[4])
redis.call('HINCRBY', KEYS[1], p .. 'changed', moved)
redis.call('HINCRBY', KEYS[1], p .. 'batches', 1)
return {moved, gone, raced, conflicts, failed, clashed}
"""

# Lua: one SCAN page with the values of its keys, as one string of records
# (key length u32, value length i32: -1 gone, -2 not a string; key; value).
# ARGV: cursor, match pattern, count. Returns {next cursor, records}.
READ_LUA = """
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local keys = page[2]
local parts = {}
local n = #keys
local first = 1
while first <= n do
  local last = math.min(first + 499, n)
  local values = redis.call('MGET', unpack(keys, first, last))
  for i = first, last do
    local key, value = keys[i], values[i - first + 1]
    if value then
      parts[#parts + 1] = struct.pack('>I4i4', #key, #value)
      parts[#parts + 1] = key
      parts[#parts + 1] = value
    else
      local gone = redis.call('EXISTS', key) == 0
      parts[#parts + 1] = struct.pack('>I4i4', #key, gone and -1 or -2)
      parts[#parts + 1] = key
    end
  end
  first = last + 1
end
return {page[1], table.concat(parts)}
"""

# Lua: one page of RENAMEs (any type; RENAME keeps the TTL). Same KEYS/ARGV layout, no values.
RENAME_LUA = """
local p, overwrite = ARGV[1], ARGV[5]
local moved, gone, conflicts = 0, 0, 0
local clashed = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local src, dst = KEYS[2 * i], KEYS[2 * i + 1]
  local done
  if overwrite == '1' then
    done = redis.pcall('RENAME', src, dst)
  else
    done = redis.pcall('RENAMENX', src, dst)
  end
  if type(done) == 'table' and done['err'] then
    gone = gone + 1  -- no such key: renamed by an earlier run, or deleted
  elseif done == 0 then
    conflicts = conflicts + 1
    clashed[#clashed + 1] = i
  else
    moved = moved + 1
  end
end
redis.call('HSET', KEYS[1], p .. 'cursor', ARGV[2], p .. 'run', ARGV[3], p .. 'pass', ARGV[4])
redis.call('HINCRBY', KEYS[1], p .. 'changed', moved)
redis.call('HINCRBY', KEYS[1], p .. 'batches', 1)
return {moved, gone, 0, conflicts, {}, clashed}
"""

# Lua: one page of TTL changes. KEYS: checkpoint, then keys. ARGV: field prefix, next cursor,
# run id, pass, only-missing flag, then one value per key: milliseconds, or -1 to persist.
TTL_LUA = """
local p, only_missing = ARGV[1], ARGV[5]
local changed, gone, skipped = 0, 0, 0
for i = 2, #KEYS do
  local key, ms = KEYS[i], tonumber(ARGV[4 + i])
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then
    gone = gone + 1
  elseif only_missing == '1' and pttl ~= -1 then
    skipped = skipped + 1
  elseif ms < 0 then
    if redis.call('PERSIST', key) == 1 then changed = changed + 1 else skipped = skipped + 1 end
  else
    redis.call('PEXPIRE', key, ms)
    changed = changed + 1
  end
end
redis.call('HSET', KEYS[1], p .. 'cursor', ARGV[2], p .. 'run', ARGV[3], p .. 'pass', ARGV[4])
redis.call('HINCRBY', KEYS[1], p .. 'changed', changed)
redis.call('HINCRBY', KEYS[1], p .. 'batches', 1)
return {changed, gone, 0, 0, {}, {}, skipped}
"""
