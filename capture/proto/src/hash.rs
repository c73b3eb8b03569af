//! FNV-1a, a tiny stable hash for deterministic record ids.
//!
//! Ids must be identical across runs, machines and Rust versions (std's `DefaultHasher` promises
//! none of that), and they are not used as hash-table keys, so flooding resistance is not needed.

use std::net::IpAddr;

/// 64-bit FNV-1a.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Feeds bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Feeds an address with its family, so `::ffff:1.2.3.4` and `1.2.3.4` differ.
    pub fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.bytes(&[4]);
                self.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.bytes(&[6]);
                self.bytes(&v6.octets());
            }
        }
    }

    /// The hash value.
    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        let mut h = Fnv64::default();
        h.bytes(b"");
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv64::default();
        h.bytes(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv64::default();
        h.bytes(b"foobar");
        assert_eq!(h.finish(), 0x8594_4171_f739_67e8);
    }
}
