//! Compact encodings for values kept in shared data.
//!
//! Shared data holds bytes; every VM decodes them. [`Codec`] is the contract;
//! integers use fixed little-endian bytes (identical on wasm32 and native) and
//! any serde type can ride in [`Postcard`], a compact varint format.

use serde::{Serialize, de::DeserializeOwned};

/// Encoding of a shared-data value. `decode` must reject malformed bytes with
/// `None` rather than panic: another plugin (or version) may share the key.
pub trait Codec: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

macro_rules! fixed_codec {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self) -> Vec<u8> {
                self.to_le_bytes().to_vec()
            }
            fn decode(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
fixed_codec!(u32, u64, i64, f64);

/// A serde value in postcard encoding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Postcard<T>(pub T);

impl<T: Serialize + DeserializeOwned> Codec for Postcard<T> {
    fn encode(&self) -> Vec<u8> {
        // Serialising into a Vec only fails for types serde cannot express
        // (e.g. maps with non-string keys are fine here); empty marks that.
        postcard::to_allocvec(&self.0).unwrap_or_default()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok().map(Postcard)
    }
}

/// FNV-1a, 64-bit: a stable hash every VM computes alike (std's hashers are
/// randomly seeded or not guaranteed stable).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().copied().fold(FNV_OFFSET, fnv1a64_step)
}

/// FNV-1a's 64-bit offset basis: the hash of no bytes.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One byte of FNV-1a (64-bit): `fnv1a64(b)` is this folded over `b` from
/// [`FNV_OFFSET`], for input that arrives in pieces.
#[inline]
pub fn fnv1a64_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The 64-bit finaliser of MurmurHash3: every input bit affects every output bit.
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Bucket {
        tat_ns: u64,
        owner: u64,
        name: String,
    }

    #[test]
    fn integers_are_fixed_width_little_endian() {
        assert_eq!(7u64.encode(), vec![7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(u64::decode(&[1, 0, 0, 0, 0, 0, 0, 1]), Some(1 | (1 << 56)));
        assert_eq!(u64::decode(&[1, 2, 3]), None);
        assert_eq!(f64::decode(&0.25f64.encode()), Some(0.25));
    }

    #[test]
    fn postcard_round_trip_and_rejects_garbage() {
        let b = Postcard(Bucket {
            tat_ns: u64::MAX,
            owner: 3,
            name: "k".into(),
        });
        let bytes = b.encode();
        assert!(bytes.len() < 16, "compact: {} bytes", bytes.len());
        assert_eq!(Postcard::<Bucket>::decode(&bytes), Some(b));
        assert_eq!(Postcard::<Bucket>::decode(&[0xff, 0xff]), None);
    }

    #[test]
    fn fnv_is_stable() {
        // Known FNV-1a 64 vectors: a change would split VMs across versions.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
