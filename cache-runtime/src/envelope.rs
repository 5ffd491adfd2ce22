//! The envelope in front of a cached value's bytes.
//!
//! Layout (all integers little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `RM` |
//! | 2 | layout version (2) |
//! | 3 | codec id |
//! | 4 | flags (no flag is defined yet: a set bit is an unknown feature, so a miss) |
//! | 5..13 | fingerprint of the value type, the key template and the function's `version` |
//! | 13..21 | written at, milliseconds since the Unix epoch |
//! | 21..29 | fresh until, milliseconds since the Unix epoch |
//! | 29..33 | how long the value took to compute, in milliseconds (early refresh uses it) |
//! | 33 | number of tag tokens that follow, `n` |
//! | 34..34+16n | the tokens of the entry's tags when it was computed, in the function's tag order |
//! | 34+16n.. | the codec's bytes |
//!
//! Anything that does not match is a [`DecodeError`]: the caller treats it as a miss and
//! overwrites the entry.

use crate::codec::{Codec, CodecError};
use crate::tags::TOKEN_LEN;
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAGIC: [u8; 2] = *b"RM";
const LAYOUT_VERSION: u8 = 2;
const HEADER_LEN: usize = 34;

/// Freshness times recorded with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryTimes {
    /// When the value was computed, in milliseconds since the Unix epoch.
    pub written_at_ms: u64,
    /// Until when the value is fresh, in milliseconds since the Unix epoch.
    pub fresh_until_ms: u64,
    /// How long the value took to compute, in milliseconds.
    pub computed_in_ms: u32,
}

/// Why stored bytes are not a usable entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes were not written by redis-memo, or by an incompatible layout.
    #[error("not a redis-memo entry (foreign bytes or an unknown layout)")]
    Foreign,
    /// Written by another codec, or with a feature flag this version does not know.
    #[error("written with codec {codec} and flags {flags:#04x}, which this reader does not use")]
    Format {
        /// The codec id found.
        codec: u8,
        /// The flags found.
        flags: u8,
    },
    /// Written by a version of redis-memo with another envelope layout (during a rolling
    /// deploy, say): a miss, overwritten.
    #[error("written with envelope layout {0}, which this version does not read")]
    Layout(u8),
    /// Written for another value type, key template or `version` of the function.
    #[error("written for another type, key template or version of the function")]
    Fingerprint,
    /// One of the entry's tags was invalidated since it was computed (its token changed or its
    /// version key is gone). Not damage: the entry is simply out of date.
    #[error("a tag of the entry was invalidated since it was computed")]
    Invalidated,
    /// The header matched but the value did not decode.
    #[error("the value does not decode: {0}")]
    Corrupt(#[from] CodecError),
}

impl DecodeError {
    /// A label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Foreign => "foreign",
            DecodeError::Format { .. } => "format",
            DecodeError::Layout(_) => "layout",
            DecodeError::Fingerprint => "fingerprint",
            DecodeError::Invalidated => "invalidated",
            DecodeError::Corrupt(_) => "corrupt",
        }
    }
}

/// Encodes `value` behind an envelope header that records `tags`, the tokens of the entry's
/// tags (at most 255).
pub fn encode<C: Codec, T: Serialize + ?Sized>(
    value: &T,
    fingerprint: u64,
    times: EntryTimes,
    tags: &[[u8; TOKEN_LEN]],
) -> Result<Vec<u8>, CodecError> {
    let count = u8::try_from(tags.len())
        .map_err(|_| CodecError("an entry records at most 255 tags".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + TOKEN_LEN * tags.len() + 64);
    out.extend_from_slice(&MAGIC);
    out.push(LAYOUT_VERSION);
    out.push(C::ID);
    out.push(0);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&times.written_at_ms.to_le_bytes());
    out.extend_from_slice(&times.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&times.computed_in_ms.to_le_bytes());
    out.push(count);
    for token in tags {
        out.extend_from_slice(token);
    }
    C::encode(value, &mut out)?;
    Ok(out)
}

/// Decodes an entry written by [`encode`] with the same codec and fingerprint. With
/// `current`, the tokens its tags hold now (`None` for a tag whose version key is missing),
/// an entry that recorded other tokens is [`DecodeError::Invalidated`]; without, tags are not
/// checked (the entry was just computed).
pub fn decode<C: Codec, T: DeserializeOwned>(
    bytes: &[u8],
    fingerprint: u64,
    current: Option<&[Option<[u8; TOKEN_LEN]>]>,
) -> Result<(T, EntryTimes), DecodeError> {
    if bytes.len() < 3 || bytes[0..2] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    if bytes[2] != LAYOUT_VERSION {
        return Err(DecodeError::Layout(bytes[2]));
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Foreign);
    }
    let (codec, flags) = (bytes[3], bytes[4]);
    if codec != C::ID || flags != 0 {
        return Err(DecodeError::Format { codec, flags });
    }
    if read_u64(bytes, 5) != fingerprint {
        return Err(DecodeError::Fingerprint);
    }
    let count = usize::from(bytes[33]);
    let body = HEADER_LEN + TOKEN_LEN * count;
    if bytes.len() < body {
        return Err(DecodeError::Foreign);
    }
    if let Some(current) = current {
        let recorded = bytes[HEADER_LEN..body].chunks_exact(TOKEN_LEN);
        let all_current = current.len() == count
            && recorded
                .zip(current)
                .all(|(recorded, now)| now.as_ref().is_some_and(|now| now[..] == *recorded));
        if !all_current {
            return Err(DecodeError::Invalidated);
        }
    }
    let mut computed_in = [0u8; 4];
    computed_in.copy_from_slice(&bytes[29..33]);
    let times = EntryTimes {
        written_at_ms: read_u64(bytes, 13),
        fresh_until_ms: read_u64(bytes, 21),
        computed_in_ms: u32::from_le_bytes(computed_in),
    };
    let value = C::decode(&bytes[body..])?;
    Ok((value, times))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Bincode;

    const TIMES: EntryTimes = EntryTimes {
        written_at_ms: 1,
        fresh_until_ms: 2,
        computed_in_ms: 3,
    };

    #[test]
    fn round_trips_with_times() {
        let bytes = encode::<Bincode, _>(&vec![1u8, 2, 3], 99, TIMES, &[]).unwrap();
        let (value, times) = decode::<Bincode, Vec<u8>>(&bytes, 99, Some(&[])).unwrap();
        assert_eq!(value, vec![1, 2, 3]);
        assert_eq!(times, TIMES);
    }

    #[test]
    fn mismatches_are_typed_misses() {
        let bytes = encode::<Bincode, _>(&5u32, 99, TIMES, &[]).unwrap();
        assert!(matches!(
            decode::<Bincode, u32>(&bytes, 98, None),
            Err(DecodeError::Fingerprint)
        ));
        assert!(matches!(
            decode::<Bincode, u32>(b"hello world", 99, None),
            Err(DecodeError::Foreign)
        ));
        assert!(matches!(
            decode::<Bincode, u32>(&bytes[..HEADER_LEN - 1], 99, None),
            Err(DecodeError::Foreign)
        ));
        let mut older = bytes.clone();
        older[2] = 1;
        assert!(matches!(
            decode::<Bincode, u32>(&older, 99, None),
            Err(DecodeError::Layout(1))
        ));
        let mut flagged = bytes.clone();
        flagged[4] = 1;
        assert!(matches!(
            decode::<Bincode, u32>(&flagged, 99, None),
            Err(DecodeError::Format { .. })
        ));
        let truncated = &bytes[..HEADER_LEN];
        assert!(matches!(
            decode::<Bincode, u32>(truncated, 99, None),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn an_entry_is_valid_only_under_the_tokens_it_recorded() {
        let (a, b) = ([1u8; TOKEN_LEN], [2u8; TOKEN_LEN]);
        let bytes = encode::<Bincode, _>(&7u32, 99, TIMES, &[a, b]).unwrap();
        let decoded = decode::<Bincode, u32>(&bytes, 99, Some(&[Some(a), Some(b)])).unwrap();
        assert_eq!(decoded.0, 7);
        for current in [
            vec![Some(a), Some(a)],
            vec![Some(a), None],
            vec![Some(a)],
            vec![Some(a), Some(b), Some(b)],
        ] {
            assert!(matches!(
                decode::<Bincode, u32>(&bytes, 99, Some(&current)),
                Err(DecodeError::Invalidated)
            ));
        }
        assert_eq!(decode::<Bincode, u32>(&bytes, 99, None).unwrap().0, 7);
        assert!(matches!(
            decode::<Bincode, u32>(&bytes[..HEADER_LEN + TOKEN_LEN], 99, None),
            Err(DecodeError::Foreign)
        ));
    }
}
