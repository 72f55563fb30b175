//! The request fingerprint: SHA-256 over method, path with query, selected headers and the body.
//! A retry with the same key but another fingerprint is a different request (422).

use sha2::{Digest, Sha256};

/// A finished fingerprint.
pub type Fingerprint = [u8; 32];

/// Incremental hasher, so the body can be fed as Envoy hands it over.
pub struct Fingerprinter(Sha256);

impl Fingerprinter {
    /// Starts with the parts known at the headers: every field is length-prefixed, so no two
    /// different requests can produce the same byte stream by moving bytes between fields.
    pub fn new(method: &str, path: &str, headers: &[(&str, Vec<&[u8]>)]) -> Self {
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
        Fingerprinter(h)
    }

    pub fn update_body(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish(self) -> Fingerprint {
        self.0.finalize().into()
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
        let mut f = Fingerprinter::new(method, path, headers);
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
    fn fields_cannot_bleed_into_each_other() {
        assert_ne!(
            fp("POST", "/ab", &[], &[b""]),
            fp("POST", "/a", &[], &[b"b"])
        );
    }
}
