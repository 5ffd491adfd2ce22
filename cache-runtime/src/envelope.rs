//! The envelope in front of a cached value's bytes.
//!
//! Layout 3 (fixed-width integers little endian; `varint` is unsigned LEB128: 7 bits a byte,
//! low bits first, a set high bit means more follow):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | magic `R` |
//! | 1 | layout version (3) |
//! | 2 | codec id (low 4 bits, see [`Codec::id`]) and flags (high 4 bits: bit 0 = the value is compressed; any other set bit is a feature this version does not know, so a miss) |
//! | 3..9 | the low 48 bits of the fingerprint of the value type, the key template and the function's `version` |
//! | 9..15 | written at, milliseconds since the Unix epoch (48 bits) |
//! | varint | fresh for, milliseconds after written at |
//! | varint | how long the value took to compute, in milliseconds (early refresh uses it) |
//! | varint | number of tag tokens that follow, `n` (at most 255) |
//! | 16n | the tokens of the entry's tags when it was computed, in the function's tag order |
//! | rest | the codec's bytes, or with the compressed flag their LZ4 compression (see [`crate::compression`]) |
//!
//! An untagged entry with a ttl from 16 s to 35 minutes (fresh for fits 3 varint bytes)
//! computed in under 128 ms carries 20 bytes of envelope (19 below, 21 up to 3 days). The layout before, 2, began with
//! `RM` and a version byte and carried 34; its entries are misses, overwritten.
//!
//! Anything that does not match is a [`DecodeError`]: the caller treats it as a miss and
//! overwrites the entry.

use crate::codec::{Codec, CodecError};
use crate::compression;
use crate::tags::TOKEN_LEN;
use crate::varint::{put_varint, take_varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAGIC: u8 = b'R';
/// What layout 2 had as its second magic byte: such an entry reports its layout from byte 2.
const LAYOUT_2_MAGIC: u8 = b'M';
const LAYOUT_VERSION: u8 = 3;
/// Magic, version, codec and flags, fingerprint, written at.
const FIXED_LEN: usize = 15;
const FINGERPRINT_BITS: u32 = 48;
const FINGERPRINT_MASK: u64 = (1 << FINGERPRINT_BITS) - 1;
const WRITTEN_AT_MAX: u64 = (1 << 48) - 1;
/// The flag (in the high 4 bits of byte 2) of a compressed value.
const COMPRESSED: u8 = 0b0001;
/// The flags this version reads.
const KNOWN_FLAGS: u8 = COMPRESSED;

/// How values are written: the codec, and the size above which the codec's bytes are
/// compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Format {
    /// The codec that writes values (any codec this version knows reads them).
    pub codec: Codec,
    /// Codec bytes longer than this are compressed with LZ4 (kept plain if that does not make
    /// them smaller); `None` never compresses.
    pub compress_above: Option<usize>,
}

impl Format {
    /// `codec`, without compression.
    pub const fn new(codec: Codec) -> Self {
        Format {
            codec,
            compress_above: None,
        }
    }

    /// This format, compressing codec bytes longer than `bytes`.
    pub const fn compress_above(self, bytes: usize) -> Self {
        Format {
            compress_above: Some(bytes),
            ..self
        }
    }
}

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

/// Encodes `value` in `format` behind an envelope header that records `tags`, the tokens of
/// the entry's tags (at most 255).
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    format: Format,
    fingerprint: u64,
    times: EntryTimes,
    tags: &[[u8; TOKEN_LEN]],
) -> Result<Vec<u8>, CodecError> {
    let count = u8::try_from(tags.len())
        .map_err(|_| CodecError("an entry records at most 255 tags".into()))?;
    let mut out = Vec::with_capacity(FIXED_LEN + 12 + TOKEN_LEN * tags.len() + 64);
    out.extend_from_slice(&[MAGIC, LAYOUT_VERSION, format.codec.id()]);
    out.extend_from_slice(&(fingerprint & FINGERPRINT_MASK).to_le_bytes()[..6]);
    // A clock beyond the year 10889 or before 1970 is clamped rather than wrapped.
    let written_at = times.written_at_ms.min(WRITTEN_AT_MAX);
    out.extend_from_slice(&written_at.to_le_bytes()[..6]);
    put_varint(&mut out, times.fresh_until_ms.saturating_sub(written_at));
    put_varint(&mut out, u64::from(times.computed_in_ms));
    put_varint(&mut out, u64::from(count));
    for token in tags {
        out.extend_from_slice(token);
    }
    let header_len = out.len();
    format.codec.encode(value, &mut out)?;
    let plain_len = out.len() - header_len;
    if format.compress_above.is_some_and(|above| plain_len > above)
        && let Some(packed) = compression::compress(&out[header_len..])
    {
        out.truncate(header_len);
        out.extend_from_slice(&packed);
        out[2] |= COMPRESSED << 4;
    }
    Ok(out)
}

/// An entry's header, read without knowing the value's type: what an operator's tool shows.
///
/// ```
/// use redis_memo_runtime::envelope::{self, EntryTimes, Format};
/// use redis_memo_runtime::Codec;
///
/// let times = EntryTimes { written_at_ms: 1_000, fresh_until_ms: 61_000, computed_in_ms: 4 };
/// let bytes = envelope::encode(&"value", Format::default(), 7, times, &[]).unwrap();
/// let header = envelope::header(&bytes).unwrap();
/// assert_eq!(header.times, times);
/// assert_eq!(header.tag_tokens().count(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header<'a> {
    /// The id of the codec that wrote the value ([`Codec::from_id`] names it).
    pub codec: u8,
    /// Feature flags (bit 0: the value is compressed).
    pub flags: u8,
    /// The low 48 bits of the function's fingerprint.
    pub fingerprint: u64,
    /// When the value was written, until when it is fresh, how long it took to compute.
    pub times: EntryTimes,
    tokens: &'a [u8],
    value: &'a [u8],
}

impl<'a> Header<'a> {
    /// The tokens the entry's tags held when it was computed, in the function's tag order.
    pub fn tag_tokens(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        self.tokens.chunks_exact(TOKEN_LEN)
    }

    /// The value's bytes as stored: the codec's bytes, or their compression when
    /// [`Header::compressed`].
    pub fn value_bytes(&self) -> &'a [u8] {
        self.value
    }

    /// Whether the value's bytes are compressed.
    pub fn compressed(&self) -> bool {
        self.flags & COMPRESSED != 0
    }
}

/// Reads the header of stored bytes: [`DecodeError::Foreign`] or [`DecodeError::Layout`] when
/// they are not an entry of this layout. Codec, flags and fingerprint are reported, not
/// checked ([`decode`] checks them).
pub fn header(bytes: &[u8]) -> Result<Header<'_>, DecodeError> {
    match bytes {
        [MAGIC, LAYOUT_2_MAGIC, layout, ..] => return Err(DecodeError::Layout(*layout)),
        [MAGIC, LAYOUT_VERSION, ..] => {}
        [MAGIC, layout, ..] => return Err(DecodeError::Layout(*layout)),
        _ => return Err(DecodeError::Foreign),
    }
    if bytes.len() < FIXED_LEN {
        return Err(DecodeError::Foreign);
    }
    let mut rest = &bytes[FIXED_LEN..];
    let fresh_for = take_varint(&mut rest).ok_or(DecodeError::Foreign)?;
    let computed_in = take_varint(&mut rest).ok_or(DecodeError::Foreign)?;
    let count = usize::try_from(take_varint(&mut rest).ok_or(DecodeError::Foreign)?)
        .map_err(|_| DecodeError::Foreign)?;
    let tokens_len = count
        .checked_mul(TOKEN_LEN)
        .filter(|len| *len <= rest.len())
        .ok_or(DecodeError::Foreign)?;
    let (tokens, value) = rest.split_at(tokens_len);
    let written_at_ms = read_u48(&bytes[9..15]);
    Ok(Header {
        codec: bytes[2] & 0x0f,
        flags: bytes[2] >> 4,
        fingerprint: read_u48(&bytes[3..9]),
        times: EntryTimes {
            written_at_ms,
            fresh_until_ms: written_at_ms.saturating_add(fresh_for),
            computed_in_ms: u32::try_from(computed_in).map_err(|_| DecodeError::Foreign)?,
        },
        tokens,
        value,
    })
}

/// Decodes an entry written by [`encode`] with the same fingerprint, in whichever codec this
/// version knows wrote it, compressed or not. With `current`, the tokens its tags hold now
/// (`None` for a tag whose version key is missing), an entry that recorded other tokens is
/// [`DecodeError::Invalidated`]; without, tags are not checked (the entry was just computed).
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    fingerprint: u64,
    current: Option<&[Option<[u8; TOKEN_LEN]>]>,
) -> Result<(T, EntryTimes), DecodeError> {
    let header = header(bytes)?;
    let codec = Codec::from_id(header.codec).filter(|_| header.flags & !KNOWN_FLAGS == 0);
    let Some(codec) = codec else {
        return Err(DecodeError::Format {
            codec: header.codec,
            flags: header.flags,
        });
    };
    if header.fingerprint != fingerprint & FINGERPRINT_MASK {
        return Err(DecodeError::Fingerprint);
    }
    if let Some(current) = current {
        let recorded = header.tag_tokens();
        let all_current = current.len() == recorded.len()
            && recorded
                .zip(current)
                .all(|(recorded, now)| now.as_ref().is_some_and(|now| now[..] == *recorded));
        if !all_current {
            return Err(DecodeError::Invalidated);
        }
    }
    let value = if header.compressed() {
        codec.decode(&compression::decompress(header.value)?)?
    } else {
        codec.decode(header.value)?
    };
    Ok((value, header.times))
}

fn read_u48(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..6].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    const PLAIN: Format = Format::new(Codec::Bincode);

    const TIMES: EntryTimes = EntryTimes {
        written_at_ms: 1,
        fresh_until_ms: 2,
        computed_in_ms: 3,
    };

    #[test]
    fn round_trips_with_times() {
        let bytes = encode(&vec![1u8, 2, 3], PLAIN, 99, TIMES, &[]).unwrap();
        let (value, times) = decode::<Vec<u8>>(&bytes, 99, Some(&[])).unwrap();
        assert_eq!(value, vec![1, 2, 3]);
        assert_eq!(times, TIMES);
    }

    /// The header's length for `TIMES` and no tag: 15 fixed bytes and three one-byte varints.
    const UNTAGGED_HEADER: usize = FIXED_LEN + 3;

    #[test]
    fn mismatches_are_typed_misses() {
        let bytes = encode(&5u32, PLAIN, 99, TIMES, &[]).unwrap();
        assert!(matches!(
            decode::<u32>(&bytes, 98, None),
            Err(DecodeError::Fingerprint)
        ));
        assert!(matches!(
            decode::<u32>(b"hello world", 99, None),
            Err(DecodeError::Foreign)
        ));
        for cut in [FIXED_LEN - 1, FIXED_LEN + 1, UNTAGGED_HEADER - 1] {
            assert!(matches!(
                decode::<u32>(&bytes[..cut], 99, None),
                Err(DecodeError::Foreign)
            ));
        }
        let mut newer = bytes.clone();
        newer[1] = 4;
        assert!(matches!(
            decode::<u32>(&newer, 99, None),
            Err(DecodeError::Layout(4))
        ));
        assert!(matches!(
            decode::<u32>(b"RM\x02\x01\x00 a layout 2 entry", 99, None),
            Err(DecodeError::Layout(2))
        ));
        let mut flagged = bytes.clone();
        flagged[2] |= 0x20;
        assert!(matches!(
            decode::<u32>(&flagged, 99, None),
            Err(DecodeError::Format { codec: 1, flags: 2 })
        ));
        let mut unknown_codec = bytes.clone();
        unknown_codec[2] = 9;
        assert!(matches!(
            decode::<u32>(&unknown_codec, 99, None),
            Err(DecodeError::Format { codec: 9, flags: 0 })
        ));
        let truncated = &bytes[..UNTAGGED_HEADER];
        assert!(matches!(
            decode::<u32>(truncated, 99, None),
            Err(DecodeError::Corrupt(_))
        ));
        let mut endless = bytes[..FIXED_LEN].to_vec();
        endless.extend_from_slice(&[0xff; 12]);
        assert!(matches!(
            decode::<u32>(&endless, 99, None),
            Err(DecodeError::Foreign)
        ));
    }

    #[test]
    fn the_fingerprint_kept_is_its_low_48_bits() {
        let fingerprint = 0xabcd_0123_4567_89ef_u64;
        let bytes = encode(&5u32, PLAIN, fingerprint, TIMES, &[]).unwrap();
        assert_eq!(header(&bytes).unwrap().fingerprint, 0x0123_4567_89ef);
        assert_eq!(decode::<u32>(&bytes, fingerprint, None).unwrap().0, 5);
        assert!(matches!(
            decode::<u32>(&bytes, fingerprint ^ 1, None),
            Err(DecodeError::Fingerprint)
        ));
    }

    #[test]
    fn an_untagged_entry_with_a_ten_minute_ttl_carries_20_bytes() {
        let times = EntryTimes {
            written_at_ms: 1_796_000_000_000,
            fresh_until_ms: 1_796_000_600_000,
            computed_in_ms: 12,
        };
        let value = "some value";
        let mut bare = Vec::new();
        Codec::Bincode.encode(value, &mut bare).unwrap();
        let bytes = encode(value, PLAIN, u64::MAX, times, &[]).unwrap();
        assert_eq!(bytes.len() - bare.len(), 20);
        let header = header(&bytes).unwrap();
        assert_eq!(header.times, times);
        assert_eq!(header.value_bytes(), &bare[..]);
        let tagged = encode(value, PLAIN, 1, times, &[[7; TOKEN_LEN]; 2]).unwrap();
        assert_eq!(tagged.len() - bytes.len(), 2 * TOKEN_LEN);
    }

    #[test]
    fn times_survive_every_varint_width() {
        for fresh_for in [0, 127, 128, 16_383, 16_384, u64::from(u32::MAX), 1 << 47] {
            for computed_in_ms in [0, 127, 128, u32::MAX] {
                let times = EntryTimes {
                    written_at_ms: 1_796_000_000_000,
                    fresh_until_ms: 1_796_000_000_000 + fresh_for,
                    computed_in_ms,
                };
                let bytes = encode(&1u8, PLAIN, 5, times, &[]).unwrap();
                assert_eq!(decode::<u8>(&bytes, 5, None).unwrap(), (1, times));
            }
        }
    }

    #[test]
    fn an_entry_is_valid_only_under_the_tokens_it_recorded() {
        let (a, b) = ([1u8; TOKEN_LEN], [2u8; TOKEN_LEN]);
        let bytes = encode(&7u32, PLAIN, 99, TIMES, &[a, b]).unwrap();
        let decoded = decode::<u32>(&bytes, 99, Some(&[Some(a), Some(b)])).unwrap();
        assert_eq!(decoded.0, 7);
        for current in [
            vec![Some(a), Some(a)],
            vec![Some(a), None],
            vec![Some(a)],
            vec![Some(a), Some(b), Some(b)],
        ] {
            assert!(matches!(
                decode::<u32>(&bytes, 99, Some(&current)),
                Err(DecodeError::Invalidated)
            ));
        }
        assert_eq!(decode::<u32>(&bytes, 99, None).unwrap().0, 7);
        assert!(matches!(
            decode::<u32>(&bytes[..UNTAGGED_HEADER + TOKEN_LEN], 99, None),
            Err(DecodeError::Foreign)
        ));
    }

    #[test]
    fn every_codec_reads_every_codecs_entries_compressed_or_not() {
        let value: Vec<String> = (0..200).map(|i| format!("row {i} of a page")).collect();
        let formats = [Codec::Bincode, Codec::MessagePack]
            .into_iter()
            .flat_map(|codec| [Format::new(codec), Format::new(codec).compress_above(64)]);
        for format in formats {
            let bytes = encode(&value, format, 5, TIMES, &[[3; TOKEN_LEN]]).unwrap();
            let header = header(&bytes).unwrap();
            assert_eq!(Codec::from_id(header.codec), Some(format.codec));
            assert_eq!(header.compressed(), format.compress_above.is_some());
            assert_eq!(header.tag_tokens().count(), 1);
            let (back, times) = decode::<Vec<String>>(&bytes, 5, None).unwrap();
            assert_eq!((back, times), (value.clone(), TIMES), "{format:?}");
        }
    }

    #[test]
    fn compression_applies_above_its_threshold_only_and_only_if_it_shrinks() {
        let small = "a".repeat(60);
        let large = "a".repeat(600);
        let format = PLAIN.compress_above(100);
        let stored = |value: &String| encode(value, format, 1, TIMES, &[]).unwrap();
        assert!(!header(&stored(&small)).unwrap().compressed());
        let packed = stored(&large);
        assert!(header(&packed).unwrap().compressed());
        assert!(packed.len() < 100, "{} bytes", packed.len());
        let mut rng = fastrand::Rng::with_seed(3);
        let noise: Vec<u8> = (0..600).map(|_| rng.u8(..)).collect();
        let bytes = encode(&noise, format, 1, TIMES, &[]).unwrap();
        assert!(!header(&bytes).unwrap().compressed());
        assert_eq!(decode::<Vec<u8>>(&bytes, 1, None).unwrap().0, noise);
    }

    #[test]
    fn a_corrupt_compressed_value_is_a_corrupt_entry() {
        let mut bytes = encode(&"a".repeat(600), PLAIN.compress_above(0), 1, TIMES, &[]).unwrap();
        let len = bytes.len();
        bytes.truncate(len - 3);
        assert!(matches!(
            decode::<String>(&bytes, 1, None),
            Err(DecodeError::Corrupt(_))
        ));
    }
}
