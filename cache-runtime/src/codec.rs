//! Serialization of cached values: the [`Codec`] a cache writes with
//! ([`CacheBuilder::codec`](crate::CacheBuilder::codec)). Every entry records the codec that
//! wrote it, and a reader decodes each entry with its own codec, so a cache can change codec
//! without its existing entries becoming misses.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub(crate) String);

/// A serialization format for cached values.
///
/// ```
/// use redis_memo_runtime::{Cache, Codec, MemoryStore};
///
/// // Entries other languages can read: MessagePack, structs as maps of field names.
/// let cache = Cache::builder()
///     .memory(MemoryStore::new())
///     .codec(Codec::MessagePack)
///     .build()
///     .unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 2, standard configuration (little endian, variable-length integers): the most
    /// compact and the fastest; Rust only.
    ///
    /// Decoding is bounded: what a value's length prefixes may claim grows with the payload's
    /// size in three steps (16 MiB for payloads up to 64 KiB, 256 MiB up to 1 MiB, 512 MiB
    /// beyond), so a corrupt length prefix in a small entry cannot make the decoder allocate
    /// more than 16 MiB, nor any entry gigabytes.
    #[default]
    Bincode,
    /// MessagePack through `rmp-serde`, structs written as maps of their field names: readable
    /// from other languages (after the envelope header, see [`crate::envelope`]), and tolerant
    /// of fields added with `#[serde(default)]`. Larger and slower than bincode. It writes
    /// `Some(x)` as `x`, so a `Some(x)` whose `x` writes as nil (`Some(())`, `Some(None)`)
    /// reads back as `None`.
    MessagePack,
}

impl Codec {
    const BINCODE_ID: u8 = 1;
    const MESSAGE_PACK_ID: u8 = 2;

    /// The id recorded in the envelope (4 bits).
    pub fn id(self) -> u8 {
        match self {
            Codec::Bincode => Self::BINCODE_ID,
            Codec::MessagePack => Self::MESSAGE_PACK_ID,
        }
    }

    /// The codec with envelope id `id`, if this version knows it.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            Self::BINCODE_ID => Some(Codec::Bincode),
            Self::MESSAGE_PACK_ID => Some(Codec::MessagePack),
            _ => None,
        }
    }

    /// Appends the encoding of `value` to `out`.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        match self {
            Codec::Bincode => {
                bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
                    .map(|_| ())
                    .map_err(|e| CodecError(e.to_string()))
            }
            Codec::MessagePack => {
                rmp_serde::encode::write_named(out, value).map_err(|e| CodecError(e.to_string()))
            }
        }
    }

    /// Decodes a whole value from `bytes`; trailing bytes are an error.
    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Bincode => match bytes.len() {
                len if len <= 64 << 10 => decode_bincode::<T, { 16 << 20 }>(bytes),
                len if len <= 1 << 20 => decode_bincode::<T, { 256 << 20 }>(bytes),
                _ => decode_bincode::<T, { 512 << 20 }>(bytes),
            },
            Codec::MessagePack => decode_message_pack(bytes),
        }
    }
}

fn decode_bincode<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, read) = bincode::serde::decode_from_slice::<T, _>(bytes, config)
        .map_err(|e| CodecError(e.to_string()))?;
    trailing(bytes.len() - read)?;
    Ok(value)
}

/// rmp-serde reads strings and byte strings with `Read::take` (a length prefix beyond the
/// payload's end is an error, not an allocation), and serde caps what a sequence's claimed
/// length preallocates: decoding is bounded by the payload's size.
fn decode_message_pack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    let value = T::deserialize(&mut deserializer).map_err(|e| CodecError(e.to_string()))?;
    let read = usize::try_from(deserializer.position()).unwrap_or(usize::MAX);
    trailing(bytes.len().saturating_sub(read))?;
    Ok(value)
}

fn trailing(count: usize) -> Result<(), CodecError> {
    match count {
        0 => Ok(()),
        count => Err(CodecError(format!(
            "{count} trailing bytes after the value"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Codec; 2] = [Codec::Bincode, Codec::MessagePack];

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Row {
        name: String,
        id: u64,
        tags: Vec<String>,
        blob: Vec<u8>,
    }

    #[test]
    fn round_trips() {
        let row = Row {
            name: "hello".into(),
            id: 42,
            tags: vec!["a".into(), "b".into()],
            blob: vec![1, 2, 3],
        };
        for codec in BOTH {
            let mut out = Vec::new();
            codec.encode(&row, &mut out).unwrap();
            assert_eq!(codec.decode::<Row>(&out).unwrap(), row, "{codec:?}");
            assert_eq!(Codec::from_id(codec.id()), Some(codec));
        }
    }

    #[test]
    fn message_pack_writes_field_names() {
        let mut out = Vec::new();
        Codec::MessagePack
            .encode(
                &Row {
                    name: "n".into(),
                    id: 1,
                    tags: vec![],
                    blob: vec![],
                },
                &mut out,
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("name") && text.contains("tags"), "{text}");
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        // bincode: varint marker 253 = u64 follows, claiming a 2^60-byte string.
        let mut bytes = vec![253];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(Codec::Bincode.decode::<String>(&bytes).is_err());
        // MessagePack: str32, bin32 and array32 claiming 4 GiB.
        for marker in [0xdb, 0xc6, 0xdd] {
            let bytes = [marker, 0xff, 0xff, 0xff, 0xff, 1, 2];
            assert!(Codec::MessagePack.decode::<String>(&bytes).is_err());
            assert!(Codec::MessagePack.decode::<Vec<u64>>(&bytes).is_err());
            assert!(
                Codec::MessagePack
                    .decode::<serde_bytes_like::Bytes>(&bytes)
                    .is_err()
            );
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for codec in BOTH {
            let mut out = Vec::new();
            codec.encode(&7u32, &mut out).unwrap();
            out.push(0);
            assert!(codec.decode::<u32>(&out).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn message_pack_reads_a_struct_written_before_a_defaulted_field_was_added() {
        #[derive(serde::Serialize)]
        struct Before {
            id: u64,
        }
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct After {
            id: u64,
            #[serde(default)]
            nickname: String,
        }
        let mut out = Vec::new();
        Codec::MessagePack
            .encode(&Before { id: 3 }, &mut out)
            .unwrap();
        let after: After = Codec::MessagePack.decode(&out).unwrap();
        assert_eq!(
            after,
            After {
                id: 3,
                nickname: String::new()
            }
        );
        assert_eq!(Codec::default(), Codec::Bincode);
    }

    #[test]
    fn unknown_ids_are_none() {
        assert_eq!(Codec::from_id(0), None);
        assert_eq!(Codec::from_id(3), None);
    }

    /// A byte buffer deserialized through `deserialize_byte_buf` (what `serde_bytes` does).
    mod serde_bytes_like {
        pub struct Bytes(#[allow(dead_code)] pub Vec<u8>);

        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                        Ok(Bytes(v))
                    }
                }
                d.deserialize_byte_buf(Visit)
            }
        }
    }
}
