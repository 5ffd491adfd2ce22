//! LZ4 compression of a value's codec bytes (what
//! [`CacheBuilder::compress_above`](crate::CacheBuilder::compress_above) turns on).
//!
//! A compressed payload is the varint length of the plain bytes, then one LZ4 block. The
//! length is checked before anything is allocated: LZ4 cannot expand input more than 255
//! times and no value exceeds Redis's 512 MiB, so a length claiming more is corrupt. Within
//! that, a corrupt length allocates at most 255 times the entry's size.

use crate::codec::CodecError;
use crate::varint::{put_varint, take_varint};

/// LZ4 never expands more than this (a block of one repeated byte comes closest).
const MAX_RATIO: usize = 255;
/// No value is larger: Redis strings are at most 512 MiB.
const MAX_PLAIN: usize = 512 << 20;

/// `plain`, compressed, if that makes it smaller; `None` otherwise (random or tiny data).
pub(crate) fn compress(plain: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(10 + lz4_flex::block::get_maximum_output_size(plain.len()));
    put_varint(&mut out, plain.len() as u64);
    let header = out.len();
    out.resize(
        header + lz4_flex::block::get_maximum_output_size(plain.len()),
        0,
    );
    let written = lz4_flex::block::compress_into(plain, &mut out[header..]).ok()?;
    out.truncate(header + written);
    (out.len() < plain.len()).then_some(out)
}

/// The plain bytes of a payload [`compress`] wrote.
pub(crate) fn decompress(mut payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let corrupt = || CodecError("corrupt compressed value".into());
    let claimed = take_varint(&mut payload).ok_or_else(corrupt)?;
    let claimed = usize::try_from(claimed)
        .ok()
        .filter(|len| *len <= payload.len().saturating_mul(MAX_RATIO).min(MAX_PLAIN))
        .ok_or_else(corrupt)?;
    let plain = lz4_flex::block::decompress(payload, claimed)
        .map_err(|e| CodecError(format!("corrupt compressed value: {e}")))?;
    if plain.len() != claimed {
        return Err(corrupt());
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_like(bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut id = 0;
        while out.len() < bytes {
            out.extend_from_slice(
                format!(r#"{{"id":{id},"name":"user {id}","active":true,"roles":["reader"]}},"#)
                    .as_bytes(),
            );
            id += 1;
        }
        out
    }

    #[test]
    fn round_trips_and_shrinks_repetitive_bytes() {
        let plain = json_like(10_000);
        let packed = compress(&plain).expect("JSON-like bytes compress");
        assert!(
            packed.len() * 3 < plain.len(),
            "{} of {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(decompress(&packed).unwrap(), plain);
    }

    #[test]
    fn incompressible_bytes_are_left_alone() {
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        assert_eq!(compress(&noise), None);
        assert_eq!(compress(b"ab"), None);
    }

    #[test]
    fn a_corrupt_payload_is_an_error_without_a_large_allocation() {
        let packed = compress(&json_like(2_000)).unwrap();
        // A claimed length past what the block could expand to.
        let mut lying = Vec::new();
        put_varint(&mut lying, 1 << 40);
        lying.extend_from_slice(&packed[2..]);
        assert!(decompress(&lying).is_err());
        // Truncated, emptied, and with a wrong (smaller) claimed length.
        assert!(decompress(&packed[..packed.len() / 2]).is_err());
        assert!(decompress(&[]).is_err());
        let mut short = Vec::new();
        put_varint(&mut short, 100);
        short.extend_from_slice(&packed[2..]);
        assert!(decompress(&short).is_err());
    }
}
