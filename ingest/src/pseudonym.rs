//! Pseudonymization of person, household and vehicle identifiers.
//!
//! A pseudonym is HMAC-SHA-256 of the raw identifier under a deployment
//! secret, truncated to 128 bits and written as 32 hex digits: the same
//! person gets the same key in every source (so follow-ups can join visits,
//! cases and beds), and without the secret the raw value cannot be recovered
//! by hashing guesses of national ID numbers.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Keyed hashing of identifiers; cheap to clone (the keyed state is copied).
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key material.
        f.write_str("Pseudonymizer(..)")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer under `key` (any length; HMAC hashes long keys).
    pub fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Pseudonymizer { mac }
    }

    /// The pseudonym of a raw identifier.
    pub fn key(&self, raw: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(raw.as_bytes());
        let digest = mac.finalize().into_bytes();
        hex::encode(&digest[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_same_key_and_key_depends_on_secret() {
        let a = Pseudonymizer::new(b"one");
        let b = Pseudonymizer::new(b"two");
        assert_eq!(a.key("500101199001011234"), a.key("500101199001011234"));
        assert_ne!(a.key("500101199001011234"), b.key("500101199001011234"));
        assert_ne!(a.key("x"), a.key("y"));
        assert_eq!(a.key("x").len(), 32);
    }

    #[test]
    fn matches_rfc4231_test_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let p = Pseudonymizer::new(b"Jefe");
        assert_eq!(
            p.key("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c7"
        );
    }
}
