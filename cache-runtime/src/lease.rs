//! Leases (after the leases of Facebook's memcache, NSDI 2013): a miss takes a lease on the
//! entry, `SET <key>:lock <token> NX PX <lease>`, and the fill stores the value only while that
//! token still holds the lease, in one server-side step that also releases it. Invalidation
//! deletes entry and lease together, so a computation that began before an invalidation can
//! never store its result after it.

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What follows an entry's key in its lease's key.
pub(crate) const LEASE_SUFFIX: &str = ":lock";

/// The lease key of an entry: same hash tag, so same Redis Cluster slot.
pub(crate) fn lease_key(entry_key: &str) -> String {
    let mut key = String::with_capacity(entry_key.len() + LEASE_SUFFIX.len());
    key.push_str(entry_key);
    key.push_str(LEASE_SUFFIX);
    key
}

pub(crate) use redis_memo_rules::default_lease;

/// A token no other lease holder has: a per-process random part and a counter, in hex.
pub(crate) fn new_token() -> String {
    static PROCESS: LazyLock<u64> =
        LazyLock::new(|| RandomState::new().hash_one(std::process::id()));
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let count = NEXT.fetch_add(1, Relaxed);
    let random = RandomState::new().hash_one(count);
    format!("{:016x}{:016x}{count:x}", *PROCESS, random)
}

/// Starts the tokens of write-throughs; a reader's token (hex) never does.
const WRITER_MARK: char = 'w';

/// A write-through's token: readers that find the lease held by a writer do not wait for it
/// (the writer may be reading the entry itself, inside its body).
pub(crate) fn new_writer_token() -> String {
    let mut token = String::with_capacity(40);
    token.push(WRITER_MARK);
    token.push_str(&new_token());
    token
}

/// Whether a lease holder's token is a write-through's.
pub(crate) fn is_writer_token(token: &[u8]) -> bool {
    token.first() == Some(&(WRITER_MARK as u8))
}

/// KEYS: entry, lease. ARGV: token, lease in ms. Takes the lease if free and then returns the
/// entry as it is now (`{1, value}`, or `{1, nil}`), so a fill that landed since the caller's
/// read is seen without another round trip; `{0, holder}` if the lease is held, with the
/// holder's token. (`false` becomes a nil reply; a Lua table cannot hold nil.) `pcall`: an
/// entry of another Redis type is simply not returned (the fill overwrites it). Something
/// that is not a lease under the lease key (another Redis type, or a string without expiry,
/// written by hand) is replaced: left alone it would keep the entry from ever being stored.
pub(crate) const ACQUIRE_SCRIPT: &str = r"
local function taken()
  local value = redis.pcall('GET', KEYS[1])
  if type(value) == 'string' then
    return {1, value}
  end
  return {1, false}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return taken()
end
local holder = redis.pcall('GET', KEYS[2])
if type(holder) ~= 'string' or redis.call('PTTL', KEYS[2]) < 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return taken()
end
return {0, holder}
";

/// What taking a lease found.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// The lease is this caller's; the entry as it was at that moment, if any.
    Held(Option<bytes::Bytes>),
    /// Another caller holds it; `writer` when a write-through does.
    Busy { writer: bool },
}

/// KEYS: entry, lease. ARGV: token, value, ttl in ms, channel, publish command (`PUBLISH`, or
/// `SPUBLISH` on a cluster: the channel shares the entry's hash tag, so its slot). Stores the
/// value, releases the lease and says `filled` on the channel (waiters read the entry), if the
/// token still holds the lease; 1 if stored.
pub(crate) const FILL_SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  redis.call(ARGV[5], ARGV[4], 'filled')
  return 1
end
return 0
";

/// KEYS: lease, entry. ARGV: token, "1" to delete the entry as well, channel, publish command
/// (as for [`FILL_SCRIPT`]). Releases the
/// lease if the token still holds it (clearing an unusable entry no fill replaced), and says so
/// on the channel with an empty message.
pub(crate) const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] == '1' then
    redis.call('DEL', KEYS[2])
  end
  redis.call(ARGV[4], ARGV[3], '')
  return 1
end
return 0
";

/// KEYS: entry, lease (one hash tag, one slot). ARGV: channel, publish command (as for
/// [`FILL_SCRIPT`]). Deletes both; if a lease was
/// deleted, says so on the channel, so `lock` waiters take over instead of waiting for a fill
/// that will be rejected. 1 if the entry was there.
pub(crate) const INVALIDATE_SCRIPT: &str = r"
local removed = redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call(ARGV[2], ARGV[1], '')
end
return removed
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_leases_share_the_slot() {
        assert_ne!(new_token(), new_token());
        assert_eq!(lease_key("ns:{user:1}"), "ns:{user:1}:lock");
    }
}
