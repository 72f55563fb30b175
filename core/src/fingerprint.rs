//! The request fingerprint: SHA-256 over method, path with query, selected headers and the body,
//! then keyed: what is stored and sent to the key store is HMAC-SHA-256 of that digest under the
//! plugin's secret, so whoever reads the key store cannot confirm a guessed body.
//! A retry with the same key but another fingerprint is a different request (422).

use hmac::Mac;
use sha2::{Digest, Sha256};

/// A finished, keyed fingerprint.
pub type Fingerprint = [u8; 32];

/// Incremental hasher, so the body can be fed as Envoy hands it over.
pub struct Fingerprinter {
    hash: Sha256,
    secret: Vec<u8>,
}

/// The keyed fingerprint of an unkeyed request digest under `secret`.
pub fn keyed(secret: &[u8], digest: &[u8; 32]) -> Fingerprint {
    // HMAC accepts keys of any length, so this never fails; the fallback keeps clippy's no-panic rule.
    let Some(mut mac) = crate::mac::keyed(secret) else {
        return [0; 32];
    };
    mac.update(b"idempotency-fingerprint-key-v1");
    mac.update(digest);
    mac.finalize().into_bytes().into()
}

impl Fingerprinter {
    /// Starts with the parts known at the headers: every field is length-prefixed, so no two
    /// different requests can produce the same byte stream by moving bytes between fields.
    /// `secret` keys the result ([`Fingerprinter::finish`]).
    pub fn new(secret: &[u8], method: &str, path: &str, headers: &[(&str, Vec<&[u8]>)]) -> Self {
        let mut h = Sha256::new();
        h.update(b"idempotency-fingerprint-v1");
        field(&mut h, method.as_bytes());
        field(&mut h, path.as_bytes());
        for (name, values) in headers {
            field(&mut h, name.as_bytes());
            h.update((values.len() as u64).to_be_bytes());
            for v in values {
                field(&mut h, v);
            }
        }
        h.update(b"body");
        Fingerprinter {
            hash: h,
            secret: secret.to_vec(),
        }
    }

    pub fn update_body(&mut self, chunk: &[u8]) {
        self.hash.update(chunk);
    }

    /// The fingerprint keyed under the secret given to [`Fingerprinter::new`].
    pub fn finish(self) -> Fingerprint {
        keyed(&self.secret, &self.digest())
    }

    /// The unkeyed digest, to key under other secrets (rotation). Never leaves the filter.
    pub fn digest(&self) -> [u8; 32] {
        self.hash.clone().finalize().into()
    }
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(method: &str, path: &str, headers: &[(&str, Vec<&[u8]>)], body: &[&[u8]]) -> Fingerprint {
        let mut f = Fingerprinter::new(b"k", method, path, headers);
        for c in body {
            f.update_body(c);
        }
        f.finish()
    }

    #[test]
    fn chunking_does_not_matter() {
        assert_eq!(
            fp("POST", "/p", &[], &[b"hello world"]),
            fp("POST", "/p", &[], &[b"hello", b" world"])
        );
    }

    #[test]
    fn every_part_counts() {
        let base = fp("POST", "/p?a=1", &[], &[b"{}"]);
        assert_ne!(base, fp("PATCH", "/p?a=1", &[], &[b"{}"]));
        assert_ne!(base, fp("POST", "/p?a=2", &[], &[b"{}"]));
        assert_ne!(base, fp("POST", "/p?a=1", &[], &[b"{ }"]));
        assert_ne!(
            base,
            fp("POST", "/p?a=1", &[("x-tenant", vec![b"a"])], &[b"{}"])
        );
        assert_ne!(
            fp("POST", "/p", &[("x", vec![b"a"])], &[]),
            fp("POST", "/p", &[("x", vec![])], &[])
        );
    }

    #[test]
    fn keyed_by_the_secret_and_not_the_plain_digest() {
        let mut a = Fingerprinter::new(b"one", "POST", "/p", &[]);
        a.update_body(b"{}");
        let digest = a.digest();
        let under_one = a.finish();
        let mut b = Fingerprinter::new(b"two", "POST", "/p", &[]);
        b.update_body(b"{}");
        assert_ne!(under_one, b.finish());
        assert_ne!(under_one, digest);
        assert_eq!(under_one, keyed(b"one", &digest));
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        assert_ne!(
            fp("POST", "/ab", &[], &[b""]),
            fp("POST", "/a", &[], &[b"b"])
        );
    }
}
