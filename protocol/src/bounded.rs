//! Lists read with their bound checked while reading: a hostile body of many tiny entries is
//! refused at the first entry past the bound, not parsed whole and counted afterwards. The
//! compact format declares a list's length up front, so there the refusal comes before any entry
//! is read or any room is made for them.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};

/// What a list's elements are called in an error ("must hold 1 to 256 renewals").
pub trait Listed {
    /// The plural noun.
    const PLURAL: &'static str;
}

/// A list of at most `MAX` elements. Reading one with more stops at element `MAX + 1` (or, when
/// the format says the length first, before the first element) with [`too_many`]'s message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoundedVec<T, const MAX: usize>(pub Vec<T>);

impl<T, const MAX: usize> BoundedVec<T, MAX> {
    /// The elements.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

/// The problem a list past its bound is refused with (the same as an empty one: the field's
/// validation in [`crate::request`] says it the same way).
pub fn too_many(max: usize, what: &str) -> String {
    format!("must hold 1 to {max} {what}")
}

struct BoundedVisitor<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Listed, const MAX: usize> Visitor<'de> for BoundedVisitor<T, MAX> {
    type Value = BoundedVec<T, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {MAX} {}", T::PLURAL)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let declared = seq.size_hint().unwrap_or(0);
        if declared > MAX {
            return Err(A::Error::custom(too_many(MAX, T::PLURAL)));
        }
        let mut out = Vec::with_capacity(declared);
        while let Some(element) = seq.next_element()? {
            if out.len() == MAX {
                return Err(A::Error::custom(too_many(MAX, T::PLURAL)));
            }
            out.push(element);
        }
        Ok(BoundedVec(out))
    }
}

impl<'de, T: Deserialize<'de> + Listed, const MAX: usize> Deserialize<'de> for BoundedVec<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(BoundedVisitor(PhantomData))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct N(u8);
    impl Listed for N {
        const PLURAL: &'static str = "numbers";
    }

    #[test]
    fn a_list_past_its_bound_stops_at_the_first_extra_element() {
        let ok: BoundedVec<N, 3> = serde_json::from_str("[1,2,3]").unwrap();
        assert_eq!(ok.0, vec![N(1), N(2), N(3)]);
        // The fifth element is not valid JSON: reading stopped at the fourth.
        let e = serde_json::from_str::<BoundedVec<N, 3>>("[1,2,3,4,oops").unwrap_err();
        assert!(e.to_string().contains("must hold 1 to 3 numbers"), "{e}");
    }

    #[test]
    fn a_compact_list_declaring_too_many_is_refused_before_its_elements() {
        // A declared length of 4, its elements behind it.
        let mut bytes = postcard::to_allocvec(&4u64).unwrap();
        bytes.extend([1, 2, 3, 4]);
        let e = postcard::from_bytes::<BoundedVec<N, 3>>(&bytes).unwrap_err();
        assert_eq!(e, postcard::Error::SerdeDeCustom);
        let ok: BoundedVec<N, 3> =
            postcard::from_bytes(&postcard::to_allocvec(&vec![1u8, 2]).unwrap()).unwrap();
        assert_eq!(ok.0, vec![N(1), N(2)]);
    }

    #[test]
    fn a_hostile_batch_is_refused_in_either_format_naming_the_bound() {
        use crate::{Compact, RenewBatchRequest, MAX_RENEW_BATCH};
        // 4 MiB of empty entries: the refusal comes at entry 257.
        let mut body = b"{\"renewals\":[".to_vec();
        while body.len() < 4 * 1024 * 1024 {
            body.extend_from_slice(b"{},");
        }
        body.extend_from_slice(b"{}]}");
        let start = std::time::Instant::now();
        let e = crate::json::decode_request::<RenewBatchRequest>(&body).unwrap_err();
        assert_eq!(e.to_string(), "renewals: must hold 1 to 256 renewals");
        assert!(start.elapsed() < std::time::Duration::from_millis(50));
        // A compact batch declaring a million renewals, with nothing behind the count.
        let mut compact = vec![crate::compact::MARKER];
        compact.extend(postcard::to_allocvec(&1_000_000u64).unwrap());
        let e = RenewBatchRequest::from_compact(&compact).unwrap_err();
        assert_eq!(e.to_string(), "renewals: must hold 1 to 256 renewals");
        // One past the bound, every entry present.
        let mut compact = vec![crate::compact::MARKER];
        compact.extend(postcard::to_allocvec(&(MAX_RENEW_BATCH as u64 + 1)).unwrap());
        for _ in 0..=MAX_RENEW_BATCH {
            compact.extend([7u8; 32]);
            compact.extend([1, b't', 5]);
        }
        let e = RenewBatchRequest::from_compact(&compact).unwrap_err();
        assert_eq!(e.field, "renewals");
    }
}
