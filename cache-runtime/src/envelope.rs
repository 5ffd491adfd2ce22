//! The envelope in front of a cached value's bytes.
//!
//! Layout (all integers little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `RM` |
//! | 2 | layout version (1) |
//! | 3 | codec id |
//! | 4 | flags (no flag is defined yet: a set bit is an unknown feature, so a miss) |
//! | 5..13 | fingerprint of the value type, the key template and the function's `version` |
//! | 13..21 | written at, milliseconds since the Unix epoch |
//! | 21..29 | fresh until, milliseconds since the Unix epoch |
//! | 29 | number of tag versions that follow (0 until tags exist) |
//! | 30.. | the codec's bytes |
//!
//! Anything that does not match is a [`DecodeError`]: the caller treats it as a miss and
//! overwrites the entry.

use crate::codec::{Codec, CodecError};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAGIC: [u8; 2] = *b"RM";
const LAYOUT_VERSION: u8 = 1;
const HEADER_LEN: usize = 30;

/// Freshness times recorded with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryTimes {
    /// When the value was computed, in milliseconds since the Unix epoch.
    pub written_at_ms: u64,
    /// Until when the value is fresh, in milliseconds since the Unix epoch.
    pub fresh_until_ms: u64,
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
    /// Written for another value type, key template or `version` of the function.
    #[error("written for another type, key template or version of the function")]
    Fingerprint,
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
            DecodeError::Fingerprint => "fingerprint",
            DecodeError::Corrupt(_) => "corrupt",
        }
    }
}

/// Encodes `value` behind an envelope header.
pub fn encode<C: Codec, T: Serialize + ?Sized>(
    value: &T,
    fingerprint: u64,
    times: EntryTimes,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(&MAGIC);
    out.push(LAYOUT_VERSION);
    out.push(C::ID);
    out.push(0);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&times.written_at_ms.to_le_bytes());
    out.extend_from_slice(&times.fresh_until_ms.to_le_bytes());
    out.push(0);
    C::encode(value, &mut out)?;
    Ok(out)
}

/// Decodes an entry written by [`encode`] with the same codec and fingerprint.
pub fn decode<C: Codec, T: DeserializeOwned>(
    bytes: &[u8],
    fingerprint: u64,
) -> Result<(T, EntryTimes), DecodeError> {
    if bytes.len() < HEADER_LEN || bytes[0..2] != MAGIC || bytes[2] != LAYOUT_VERSION {
        return Err(DecodeError::Foreign);
    }
    let (codec, flags) = (bytes[3], bytes[4]);
    if codec != C::ID || flags != 0 {
        return Err(DecodeError::Format { codec, flags });
    }
    if read_u64(bytes, 5) != fingerprint {
        return Err(DecodeError::Fingerprint);
    }
    if bytes[29] != 0 {
        // Tag versions are not part of this layout version's readers yet.
        return Err(DecodeError::Format { codec, flags });
    }
    let times = EntryTimes {
        written_at_ms: read_u64(bytes, 13),
        fresh_until_ms: read_u64(bytes, 21),
    };
    let value = C::decode(&bytes[HEADER_LEN..])?;
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
    };

    #[test]
    fn round_trips_with_times() {
        let bytes = encode::<Bincode, _>(&vec![1u8, 2, 3], 99, TIMES).unwrap();
        let (value, times) = decode::<Bincode, Vec<u8>>(&bytes, 99).unwrap();
        assert_eq!(value, vec![1, 2, 3]);
        assert_eq!(times, TIMES);
    }

    #[test]
    fn mismatches_are_typed_misses() {
        let bytes = encode::<Bincode, _>(&5u32, 99, TIMES).unwrap();
        assert!(matches!(
            decode::<Bincode, u32>(&bytes, 98),
            Err(DecodeError::Fingerprint)
        ));
        assert!(matches!(
            decode::<Bincode, u32>(b"hello world", 99),
            Err(DecodeError::Foreign)
        ));
        assert!(matches!(
            decode::<Bincode, u32>(&bytes[..HEADER_LEN - 1], 99),
            Err(DecodeError::Foreign)
        ));
        let mut flagged = bytes.clone();
        flagged[4] = 1;
        assert!(matches!(
            decode::<Bincode, u32>(&flagged, 99),
            Err(DecodeError::Format { .. })
        ));
        let truncated = &bytes[..HEADER_LEN];
        assert!(matches!(
            decode::<Bincode, u32>(truncated, 99),
            Err(DecodeError::Corrupt(_))
        ));
    }
}
