//! The store's Lua scripts: each a step that must be atomic on the server.

use redis::Script;

/// The store's Lua scripts.
pub(super) struct Scripts {
    pub(super) move_due: Script,
    pub(super) delete_if: Script,
    pub(super) acquire: Script,
    pub(super) join: Script,
    pub(super) complete: Script,
    pub(super) retry: Script,
    pub(super) dead_letter: Script,
    pub(super) mark_due: Script,
    pub(super) clear_due: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            move_due: Script::new(MOVE_DUE),
            delete_if: Script::new(DELETE_IF),
            acquire: Script::new(ACQUIRE),
            join: Script::new(JOIN),
            complete: Script::new(&entry_script(COMPLETE)),
            retry: Script::new(&entry_script(RETRY)),
            dead_letter: Script::new(&entry_script(DEAD_LETTER)),
            mark_due: Script::new(MARK_DUE),
            clear_due: Script::new(CLEAR_DUE),
        }
    }
}

/// Moves due retries from the delayed set into the stream.
pub(super) const MOVE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 256)
for _, member in ipairs(due) do
  local entry = cjson.decode(member)
  if entry.d then
    redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', entry.a, 'd', entry.d)
  else
    redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', entry.a)
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
";

/// A delivery's tokens are kept once, in the hash `{prefix}:delivery:<id>`
/// (`t`: the tokens, `n`: how many entries name it) that its entries name
/// in their field `d`; the scripts below move an entry with its `d`, and
/// the last entry of a delivery completed removes the hash. Shared by the
/// scripts: the fields of stream entry `id` of `stream` as a table.
pub(super) const ENTRY_FIELDS: &str = r"
local function fields(stream, id)
  local found = redis.call('XRANGE', stream, id, id)
  if not found[1] then return nil end
  local out = {}
  local list = found[1][2]
  for i = 1, #list, 2 do out[list[i]] = list[i + 1] end
  return out
end
";

/// Completes entries: XACK + XDEL, and one reference fewer to each one's
/// delivery. KEYS[1] inbox; ARGV[1] group, ARGV[2] delivery key prefix,
/// then the ids.
pub(super) const COMPLETE: &str = r"
for i = 3, #ARGV do
  local entry = fields(KEYS[1], ARGV[i])
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 and entry and entry.d then
    local key = ARGV[2] .. entry.d
    if redis.call('HINCRBY', key, 'n', -1) <= 0 then redis.call('DEL', key) end
  end
end
return 0
";

/// Moves an entry to the delayed set (with its delivery). KEYS[1] inbox,
/// KEYS[2] delayed; ARGV group, id, attempts, due, nonce (which keeps two
/// retries of equal items distinct members).
pub(super) const RETRY: &str = r"
local entry = fields(KEYS[1], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if not entry then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local member = {p = entry.p, a = tonumber(ARGV[3]), n = ARGV[5], d = entry.d}
redis.call('ZADD', KEYS[2], ARGV[4], cjson.encode(member))
return 1
";

/// Moves an entry to the dead letters (with its delivery, which the dead
/// letter keeps). KEYS[1] inbox, KEYS[2] dead; ARGV group, id, attempts,
/// reason, time.
pub(super) const DEAD_LETTER: &str = r"
local entry = fields(KEYS[1], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if not entry then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
if entry.d then
  redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', ARGV[3], 'r', ARGV[4], 't', ARGV[5], 'd', entry.d)
else
  redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', ARGV[3], 'r', ARGV[4], 't', ARGV[5])
end
return 1
";

/// A script that reads stream entries: [`ENTRY_FIELDS`] and `body`.
pub(super) fn entry_script(body: &str) -> String {
    format!("{ENTRY_FIELDS}{body}")
}

/// Takes or extends a lease if it is free or the caller's.
pub(super) const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Marks a member of a presence group alive until ARGV[2] (unix ms), drops
/// the lapsed ones (now: ARGV[3]), and lets the set expire with its
/// longest-lived member (plain `PEXPIRE`: Redis 6.2 has no `GT`).
pub(super) const JOIN: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], last[2])
end
return 1
";

/// Deletes a key only if it still holds the caller's value (a dedupe claim,
/// a lease).
pub(super) const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Marks a cursor's round due, creating the cursor (with its resource and
/// query) if there is none. KEYS[1] the cursor's hash, KEYS[2] the index of
/// cursor keys; ARGV resource, query, reason, time, the cursor's key.
pub(super) const MARK_DUE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'resource', ARGV[1], 'query', ARGV[2])
end
redis.call('HSET', KEYS[1], 'due_reason', ARGV[3], 'due_at_ms', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
";

/// Clears a cursor's due mark if it was made at or before ARGV[1] (unix
/// ms, exact as a Lua number). KEYS[1] the cursor's hash.
pub(super) const CLEAR_DUE: &str = r"
local at = redis.call('HGET', KEYS[1], 'due_at_ms')
if at and tonumber(at) <= tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], 'due_reason', 'due_at_ms')
  return 1
end
return 0
";
