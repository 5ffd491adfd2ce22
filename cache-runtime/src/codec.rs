//! Serialization of cached values. The codec is a trait so that another format is one impl
//! away; bincode 2 with its serde API is the default.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub(crate) String);

/// A serialization format for cached values.
pub trait Codec {
    /// Identifies the format inside the value envelope, so bytes written by another codec are a
    /// miss rather than a misread. The envelope keeps 4 bits of it: an id is 0 to 15 (a larger
    /// one fails to compile where the codec is used).
    const ID: u8;

    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes a whole value from `bytes`; trailing bytes are an error.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// bincode 2 (standard configuration: little endian, variable-length integers).
///
/// Decoding is bounded: what a value's length prefixes may claim grows with the payload's size
/// in three steps ([`Bincode::SMALL_LIMIT`] up to 64 KiB, [`Bincode::MEDIUM_LIMIT`] up to
/// 1 MiB, [`Bincode::LARGE_LIMIT`] beyond), so a corrupt length prefix in a small entry cannot
/// make the decoder allocate more than 16 MiB, nor any entry gigabytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl Bincode {
    /// Allocation bound while decoding payloads of up to 64 KiB.
    pub const SMALL_LIMIT: usize = 16 << 20;
    /// Allocation bound while decoding payloads of up to 1 MiB.
    pub const MEDIUM_LIMIT: usize = 256 << 20;
    /// Allocation bound while decoding larger payloads (Redis strings are at most 512 MiB).
    pub const LARGE_LIMIT: usize = 512 << 20;
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, read) = bincode::serde::decode_from_slice::<T, _>(bytes, config)
        .map_err(|e| CodecError(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}

impl Codec for Bincode {
    const ID: u8 = 1;

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        match bytes.len() {
            len if len <= 64 << 10 => decode_limited::<T, { Bincode::SMALL_LIMIT }>(bytes),
            len if len <= 1 << 20 => decode_limited::<T, { Bincode::MEDIUM_LIMIT }>(bytes),
            _ => decode_limited::<T, { Bincode::LARGE_LIMIT }>(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        Bincode::encode(&("hello".to_string(), 42u64), &mut out).unwrap();
        let back: (String, u64) = Bincode::decode(&out).unwrap();
        assert_eq!(back, ("hello".to_string(), 42));
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        // varint marker 253 = u64 follows: claims a 2^60-byte string.
        let mut bytes = vec![253];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(Bincode::decode::<String>(&bytes).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut out = Vec::new();
        Bincode::encode(&7u32, &mut out).unwrap();
        out.push(0);
        assert!(Bincode::decode::<u32>(&out).is_err());
    }
}
