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
        let mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Pseudonymizer { mac }
    }

    /// The pseudonym of a raw identifier.
    pub fn key(&self, raw: &str) -> String {
        self.key_bytes(raw).iter().map(|&b| b as char).collect()
    }

    /// The pseudonym of a raw identifier as its 32 ASCII hex digits, without
    /// an allocation: producers splice it straight into the line.
    pub fn key_bytes(&self, raw: &str) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.mac.clone();
        mac.update(raw.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; 32];
        for (i, b) in digest[..16].iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        out
    }

    /// A public name of the key: 16 hex digits that identify it without
    /// revealing it. Messages whose ids were pseudonymized carry it in the
    /// [`HEADER`] header, so a consumer under another key refuses them
    /// instead of joining pseudonyms that can never match its own.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"paicha pseudonym key fingerprint v1");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

/// The Kafka header a producer sets on a message whose identifiers it has
/// already pseudonymized; its value is the key's [`Pseudonymizer::fingerprint`].
/// A message without it carries raw identifiers, hashed by the consumer.
pub const HEADER: &str = "paicha-pseudonyms";

/// Whether `s` has the form of a pseudonym: 32 lowercase hex digits.
pub fn is_pseudonym(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    fn fingerprint_names_the_key_without_being_a_pseudonym_of_anything_common() {
        let a = Pseudonymizer::new(b"one");
        assert_eq!(a.fingerprint(), Pseudonymizer::new(b"one").fingerprint());
        assert_ne!(a.fingerprint(), Pseudonymizer::new(b"two").fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert!(is_pseudonym(&a.key("x")));
        assert!(!is_pseudonym("500101199001011234"));
        assert!(!is_pseudonym(&a.key("x").to_uppercase()));
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
