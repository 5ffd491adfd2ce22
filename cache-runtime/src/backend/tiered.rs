//! A read through the in-process tier: the copies this process holds, and the rest from
//! Redis on the tracking connection (see [`Tracking`]), in one command.

use super::local::{Noted, Stripe};
use super::tracking::{TieredRead, Tracking, Values};
use crate::CacheError;
use bytes::Bytes;
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Reads `keys` (an entry, then its tag tokens) through the tier, each kept for at most its
/// `max_ages` (`None`: read on the tracking connection, but neither served from a copy nor
/// kept). The values in the order of `keys` (`None` for a key Redis does not have), and
/// whether the copies answered alone. `None` when no connection tracks reads now: read from
/// the main connection instead.
///
/// When some values come from copies and others from Redis, the copies must still be current
/// once the reply is in: an invalidation Redis sent before the reply has been applied by then,
/// so a change made before this read began is never mixed in (a tag token's copy with a newer
/// entry, or the other way round). If one was dropped meanwhile, everything is read again
/// from Redis.
pub(crate) async fn read(
    tracking: &Arc<Tracking>,
    keys: &[&str],
    max_ages: &[Option<Duration>],
    deadline: Instant,
) -> Option<Result<(Values, bool), CacheError>> {
    let copies = tracking.copies();
    let stripes: SmallVec<[Stripe; 5]> = keys.iter().map(|key| copies.stripe_of(key)).collect();
    // Twice at most: the second pass uses no copy, so it always returns.
    for use_copies in [true, false] {
        let mut values = Values::new();
        let mut used: SmallVec<[(usize, Noted); 5]> = SmallVec::new();
        for (index, (key, max_age)) in keys.iter().zip(max_ages).enumerate() {
            let copy = max_age
                .filter(|_| use_copies)
                .and_then(|_| copies.get(key, stripes[index]));
            values.push(copy.map(|(bytes, noted)| {
                used.push((index, noted));
                bytes
            }));
        }
        if used.len() == keys.len() {
            return Some(Ok((values, true)));
        }
        let missing: SmallVec<[usize; 5]> = (0..keys.len())
            .filter(|&index| values[index].is_none())
            .collect();
        // The ticket is taken with the connection (so what is kept belongs to it); the copies
        // used above must still be current when it is taken, and unchanged once the reply is
        // in.
        let mut read = tracking.begin(&stripes)?;
        let current_at_ticket = used
            .iter()
            .all(|&(index, noted)| read.ticket.admits(index, noted));
        let track = missing.iter().any(|&index| max_ages[index].is_some());
        let replies = match fetch(tracking, &mut read, keys, &missing, track, deadline).await {
            Ok(replies) => replies,
            Err(error) => return Some(Err(error)),
        };
        for (&index, reply) in missing.iter().zip(replies) {
            if let Some(bytes) = reply {
                if let Some(max_age) = max_ages[index] {
                    let key = (keys[index], stripes[index]);
                    copies.keep(&read.ticket, index, key, bytes.clone(), max_age);
                }
                values[index] = Some(bytes);
            }
        }
        let still_current = current_at_ticket
            && used
                .iter()
                .all(|&(index, _)| copies.unchanged(&read.ticket, index, stripes[index]));
        if still_current {
            return Some(Ok((values, false)));
        }
    }
    None
}

/// `GET` or `MGET` of the `missing` of `keys`, tracked (`CLIENT CACHING yes` first, in the
/// same write) when a value read is to be kept: the values in order.
async fn fetch(
    tracking: &Tracking,
    read: &mut TieredRead,
    keys: &[&str],
    missing: &[usize],
    track: bool,
    deadline: Instant,
) -> Result<Vec<Option<Bytes>>, CacheError> {
    let command = if missing.len() == 1 { "GET" } else { "MGET" };
    let mut request = redis::cmd(command);
    for &index in missing {
        request.arg(keys[index]);
    }
    let budget = deadline.saturating_duration_since(Instant::now());
    let connection = &mut read.connection;
    let sent = async {
        if track {
            let mut pipe = redis::pipe();
            // Error replies come back as values: a refused `CLIENT CACHING` must not let an
            // untracked read be kept, and `WRONGTYPE` keeps its code.
            pipe.ignore_errors();
            pipe.cmd("CLIENT").arg("CACHING").arg("YES");
            pipe.add_command(request);
            let (caching, reply): (redis::Value, redis::Value) =
                pipe.query_async(connection).await?;
            for value in [caching, reply.clone()] {
                if let redis::Value::ServerError(error) = value {
                    return Err(redis::RedisError::from(error));
                }
            }
            Ok(reply)
        } else {
            request.query_async(connection).await
        }
    };
    let reply = match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => return Err(tracking.failed(read.id, error.into())),
        Err(_) => return Err(tracking.failed(read.id, CacheError::Timeout(budget))),
    };
    let replies = match reply {
        redis::Value::Array(replies) if missing.len() > 1 => replies,
        single if missing.len() == 1 => vec![single],
        _ => return Err(CacheError::unexpected_reply(command)),
    };
    if replies.len() != missing.len() {
        return Err(CacheError::unexpected_reply(command));
    }
    replies
        .into_iter()
        .map(|reply| match reply {
            redis::Value::BulkString(bytes) => Ok(Some(Bytes::from(bytes))),
            redis::Value::Nil => Ok(None),
            _ => Err(CacheError::unexpected_reply(command)),
        })
        .collect()
}
