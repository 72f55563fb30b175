//! HMAC-SHA-256 under the plugin's secrets. Keying an HMAC hashes two blocks (the padded key,
//! inner and outer) before any data; a first execution keys three (fingerprint, record key, the
//! record's seal), under the same secret each time. The keyed state of each secret is kept and
//! cloned instead (bench/README.md, "Group commit": the filter's own CPU per request).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::cell::RefCell;

/// Secrets whose keyed state is kept: the current one and a few previous (rotation).
const KEPT: usize = 8;

thread_local! {
    /// Each secret with its keyed state, most recently keyed last. A Wasm VM is one thread.
    static KEYED: RefCell<Vec<(Vec<u8>, Hmac<Sha256>)>> = const { RefCell::new(Vec::new()) };
}

/// An HMAC-SHA-256 keyed with `secret`, ready for data: the same as
/// `Hmac::<Sha256>::new_from_slice(secret)`, which accepts a key of any length.
pub fn keyed(secret: &[u8]) -> Option<Hmac<Sha256>> {
    KEYED.with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else {
            return Hmac::<Sha256>::new_from_slice(secret).ok();
        };
        if let Some((_, mac)) = kept.iter().find(|(s, _)| s.as_slice() == secret) {
            return Some(mac.clone());
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
        if kept.len() >= KEPT {
            kept.remove(0);
        }
        kept.push((secret.to_vec(), mac.clone()));
        Some(mac)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_gives_the_same_mac_as_a_fresh_one() {
        for secret in [&b"one"[..], b"two", b"", &[7u8; 100]] {
            for _ in 0..3 {
                let mut kept = keyed(secret).unwrap();
                kept.update(b"data");
                let mut fresh = Hmac::<Sha256>::new_from_slice(secret).unwrap();
                fresh.update(b"data");
                assert_eq!(kept.finalize().into_bytes(), fresh.finalize().into_bytes());
            }
        }
        for i in 0..(KEPT as u8 * 2) {
            let mut kept = keyed(&[i; 32]).unwrap();
            kept.update(b"x");
            let mut fresh = Hmac::<Sha256>::new_from_slice(&[i; 32]).unwrap();
            fresh.update(b"x");
            assert_eq!(kept.finalize().into_bytes(), fresh.finalize().into_bytes());
        }
    }
}
