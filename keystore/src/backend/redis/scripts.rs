//! The Lua scripts that make every state change of a record one atomic round trip, and the
//! reading of their replies: the record's layout in Redis lives here and nowhere else.

use crate::backend::{BackendError, Fenced};
use crate::protocol::{EntryKind, Hex64, RecordState};

/// Shared prelude: `now` in milliseconds from the Redis server clock.
pub(super) const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Shared prelude of the scripts that read a key's state: `cur` (its fields `s`, `fp`, `until`,
/// `keep`), `untl`, and `kept`, whether the entry is still there at `now` (a record until `until`,
/// a claim until `until` plus `keep`, abandoned in between; the key's own `PEXPIRE` is the same
/// deadline, so this only covers the moment between the two). A claim written before `keep`
/// existed has none: it is dropped when its lease ends, as it was then.
pub(super) const STATE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'fp', 'until', 'keep')
local untl = tonumber(cur[3])
local kept = false
if cur[1] and untl then
  if cur[1] == 'c' then kept = untl > now else kept = untl + (tonumber(cur[4]) or 0) > now end
end
";

/// KEYS[1] record; ARGV fingerprint, new token, lease_ms, keep (ms an abandoned claim is kept),
/// take over (`1`: an abandoned claim is taken over; else it is reported).
///
/// The first write is `HSET`, which Redis refuses when it is at its `maxmemory` (it checks a
/// script's first write that may grow memory, and only that one): a full Redis refuses the claim
/// before it changes anything. The fields of a record this claim replaces (an expired record whose
/// key has not yet gone) are dropped after.
pub(super) const CLAIM: &str = r"
if kept and not (cur[1] == 'f' and untl <= now and ARGV[5] == '1') then
  if cur[2] ~= ARGV[1] then return {'mismatch'} end
  if cur[1] == 'c' then return {'completed', redis.call('HGET', KEYS[1], 'rec')} end
  if untl > now then return {'in_flight', string.format('%d', untl - now)} end
  return {'abandoned', string.format('%d', now - untl)}
end
local lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 's', 'f', 'fp', ARGV[1], 'tok', ARGV[2],
  'until', string.format('%d', now + lease), 'keep', ARGV[4])
redis.call('HDEL', KEYS[1], 'rec', 'at')
redis.call('PEXPIRE', KEYS[1], string.format('%d', lease + tonumber(ARGV[4])))
return {'claimed', ARGV[2]}
";

/// Shared guard of complete, release and renew: the key must hold a claim (live or abandoned)
/// with the token ARGV[1]. Sets `keep` (ms the claim is kept after its lease).
pub(super) const FENCE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'tok', 'until', 'keep')
local untl = tonumber(cur[3])
local keep = tonumber(cur[4]) or 0
if cur[1] ~= 'f' or cur[2] ~= ARGV[1] or not untl or untl + keep <= now then return 'stale' end
";

/// KEYS[1] record; ARGV fingerprint. Reads only.
pub(super) const LOOKUP: &str = r"
if not kept then return {'absent'} end
if cur[2] ~= ARGV[1] then return {'mismatch'} end
if cur[1] == 'c' then return {'completed', redis.call('HGET', KEYS[1], 'rec')} end
if untl > now then return {'in_flight', string.format('%d', untl - now)} end
return {'abandoned', string.format('%d', now - untl)}
";

/// KEYS[1] record; ARGV token, record bytes, retention_ms. Accepted for a live or an abandoned
/// claim: a late answer wins as long as nobody took the key over. The first write is `HSET` (see
/// [`CLAIM`]): a full Redis refuses the record and the claim stays as it was.
pub(super) const COMPLETE: &str = r"
local retention = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 's', 'c', 'rec', ARGV[2],
  'until', string.format('%d', now + retention), 'at', string.format('%d', now))
redis.call('HDEL', KEYS[1], 'tok', 'keep')
redis.call('PEXPIRE', KEYS[1], retention)
return 'stored'
";

/// KEYS[1] record; ARGV token. `DEL` only frees memory, and Redis runs it when full.
pub(super) const RELEASE: &str = r"
redis.call('DEL', KEYS[1])
return 'released'
";

/// Flags of the renew script: it may run on a Redis at its `maxmemory`. It rewrites `until` with
/// a number of the same width (13 digits until the year 2286) and moves the key's expiry: nothing
/// grows, and a full Redis that refused renewals would let every live claim run out (and become
/// abandoned) while the store is full. Must be the script's first line.
pub(super) const RENEW_FLAGS: &str = "#!lua flags=allow-oom\n";

/// KEYS[1] record; ARGV token, lease_ms. Also revives an abandoned claim (its holder was slow,
/// not gone).
pub(super) const RENEW: &str = r"
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'until', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], string.format('%d', lease + keep))
return 'renewed'
";

/// KEYS[1] record. What the key holds, for the admin API: `{'absent'}` or
/// `{s, fp, until, now, at, rec}` (missing fields as empty strings), expired or not.
pub(super) const VIEW: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'fp', 'until', 'at', 'rec')
if not cur[1] then return {'absent'} end
local view = {cur[1], cur[2] or '', cur[3] or '0', string.format('%d', now), cur[4] or '', cur[5] or ''}
";

/// KEYS[1] record. Reads only.
pub(super) const INSPECT: &str = r"
return view
";

/// KEYS[1] record. Removes the key whatever it holds.
pub(super) const PURGE: &str = r"
redis.call('DEL', KEYS[1])
return view
";

/// Reads the reply of the `VIEW` scripts.
pub(super) fn record_state(reply: &[Vec<u8>]) -> Result<RecordState, BackendError> {
    let bad = || BackendError::Protocol(format!("record view: {reply:?}"));
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).map_err(|_| bad());
    let number = |b: &[u8]| -> Result<i64, BackendError> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (s, fp, until, now, at, rec) = match reply {
        [tag] if tag.as_slice() == b"absent" => return Ok(RecordState::Absent),
        [s, fp, until, now, at, rec] => (s, fp, until, now, at, rec),
        _ => return Err(bad()),
    };
    let fingerprint = Hex64::parse(&text(fp)?).ok_or_else(bad)?;
    let left = number(until)?.saturating_sub(number(now)?);
    let completed = match s.as_slice() {
        b"c" => true,
        b"f" => false,
        _ => return Err(bad()),
    };
    let ms = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(match (left > 0, completed) {
        (false, _) => RecordState::Expired {
            fingerprint,
            was: if completed {
                EntryKind::Completed
            } else {
                EntryKind::InFlight
            },
            expired_ms_ago: ms(left.saturating_neg()),
        },
        (true, false) => RecordState::InFlight {
            fingerprint,
            lease_left_ms: ms(left),
        },
        (true, true) => RecordState::Completed {
            fingerprint,
            record: rec.clone(),
            stored_at_ms: if at.is_empty() {
                None
            } else {
                Some(ms(number(at)?))
            },
            expires_in_ms: ms(left),
        },
    })
}

pub(super) fn fenced(reply: &str, done: &str) -> Result<Fenced, BackendError> {
    match reply {
        r if r == done => Ok(Fenced::Done),
        "stale" => Ok(Fenced::Stale),
        other => Err(BackendError::Protocol(other.to_owned())),
    }
}
