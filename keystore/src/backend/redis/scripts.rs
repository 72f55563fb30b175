//! The Lua scripts that make every state change of a record one atomic round trip, and the
//! reading of their replies: the record's layout in Redis lives here and nowhere else.

use crate::backend::{BackendError, Fenced};
use crate::protocol::{EntryKind, Hex64, RecordState};

/// Shared prelude: `now` in milliseconds from the Redis server clock.
pub(super) const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS[1] record; ARGV fingerprint, new token, lease_ms.
pub(super) const CLAIM: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'fp', 'until')
local untl = tonumber(cur[3])
if cur[1] and untl and untl > now then
  if cur[2] ~= ARGV[1] then return {'mismatch'} end
  if cur[1] == 'c' then return {'completed', redis.call('HGET', KEYS[1], 'rec')} end
  return {'in_flight', string.format('%d', untl - now)}
end
local lease = tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'f', 'fp', ARGV[1], 'tok', ARGV[2],
  'until', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], lease)
return {'claimed', ARGV[2]}
";

/// Shared guard of complete, release and renew: the key must be in flight, live, and held by ARGV[1].
pub(super) const FENCE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'tok', 'until')
local untl = tonumber(cur[3])
if cur[1] ~= 'f' or cur[2] ~= ARGV[1] or not untl or untl <= now then return 'stale' end
";

/// KEYS[1] record; ARGV fingerprint. Reads only.
pub(super) const LOOKUP: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'fp', 'until')
local untl = tonumber(cur[3])
if not (cur[1] and untl and untl > now) then return {'absent'} end
if cur[2] ~= ARGV[1] then return {'mismatch'} end
if cur[1] == 'c' then return {'completed', redis.call('HGET', KEYS[1], 'rec')} end
return {'in_flight', string.format('%d', untl - now)}
";

/// KEYS[1] record; ARGV token, record bytes, retention_ms.
pub(super) const COMPLETE: &str = r"
local retention = tonumber(ARGV[3])
redis.call('HDEL', KEYS[1], 'tok')
redis.call('HSET', KEYS[1], 's', 'c', 'rec', ARGV[2],
  'until', string.format('%d', now + retention), 'at', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], retention)
return 'stored'
";

/// KEYS[1] record; ARGV token.
pub(super) const RELEASE: &str = r"
redis.call('DEL', KEYS[1])
return 'released'
";

/// KEYS[1] record; ARGV token, lease_ms.
pub(super) const RENEW: &str = r"
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'until', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], lease)
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
