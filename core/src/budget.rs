//! The bytes one Envoy worker's VM holds on behalf of clients, against a fixed budget
//! (`memory_budget_bytes`).
//!
//! Why: each worker runs its own Wasm VM with a hard 1 GiB of linear memory (a compile-time limit of
//! Envoy's Wasm host, no config field), and an allocation that does not fit aborts the VM: every
//! later request through that worker then fails until the VM is replaced. A client decides how
//! many bytes it sends and how many requests it keeps open, so each byte the filter keeps for one
//! (a detached request's headers and body until its callout is dispatched, a response being
//! captured, a waiting duplicate, a record copied out of the near cache) is taken from this budget
//! first. Past it the request is refused before anything runs (`503` memory-budget problem), and
//! the buffers are reserved fallibly ([`try_buffer`]) so that even a budget set too high cannot
//! abort the VM.

use std::cell::Cell;
use std::rc::Rc;

/// The default budget: half of the VM's 1 GiB, leaving the other half to allocator slack,
/// transient copies and the filter's own state.
pub const DEFAULT_BUDGET_BYTES: u64 = 512 << 20;

/// What a waiting duplicate costs besides its answer (its stream id, key and fingerprint, and
/// its slot in the waiters).
pub const WAITER_BYTES: usize = 256;

/// One worker's budget: its limit and the bytes held now.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: Cell<usize>,
}

/// The budget has no room for this many bytes (or the VM had none when they were reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub wanted: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Rc<Budget> {
        Rc::new(Budget {
            limit,
            used: Cell::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes held now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Takes `bytes` from the budget, given back when the returned [`Held`] is dropped.
    pub fn take(self: &Rc<Budget>, bytes: usize) -> Result<Held, OverBudget> {
        let used = self.used.get();
        match used.checked_add(bytes) {
            Some(after) if after <= self.limit => {
                self.used.set(after);
                Ok(Held {
                    budget: self.clone(),
                    bytes,
                })
            }
            _ => Err(OverBudget { wanted: bytes }),
        }
    }
}

/// Bytes taken from a [`Budget`]; dropping it gives them back, so whatever path a request ends
/// on, its bytes are returned exactly once.
#[derive(Debug)]
pub struct Held {
    budget: Rc<Budget>,
    bytes: usize,
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `more` bytes into this holding.
    pub fn grow(&mut self, more: usize) -> Result<(), OverBudget> {
        let mut extra = self.budget.take(more)?;
        self.bytes = self.bytes.saturating_add(extra.bytes);
        // Counted in this holding now: the extra one gives nothing back.
        extra.bytes = 0;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let used = self.budget.used.get();
        self.budget.used.set(used.saturating_sub(self.bytes));
    }
}

/// An empty buffer with room for `bytes`, or [`OverBudget`] when the VM cannot grow that far: the
/// one way to allocate a size a client controls (an infallible allocation that fails aborts the VM).
pub fn try_buffer(bytes: usize) -> Result<Vec<u8>, OverBudget> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(bytes)
        .map_err(|_| OverBudget { wanted: bytes })?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_taken_up_to_the_limit_and_given_back_on_drop() {
        let budget = Budget::new(1000);
        let a = budget.take(600).unwrap();
        assert_eq!(budget.take(401).unwrap_err(), OverBudget { wanted: 401 });
        let b = budget.take(400).unwrap();
        assert_eq!(budget.used(), 1000);
        assert!(budget.take(1).is_err(), "full");
        drop(a);
        assert_eq!(budget.used(), 400);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_holding_grows_within_the_limit_and_gives_back_everything() {
        let budget = Budget::new(100);
        let mut held = budget.take(10).unwrap();
        held.grow(80).unwrap();
        assert_eq!((held.bytes(), budget.used()), (90, 90));
        assert!(held.grow(11).is_err());
        assert_eq!(held.bytes(), 90, "a refused growth changes nothing");
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn sizes_near_the_address_space_are_refused_not_wrapped() {
        let budget = Budget::new(usize::MAX - 1);
        let _held = budget.take(10).unwrap();
        assert!(budget.take(usize::MAX).is_err());
    }

    #[test]
    fn a_buffer_the_memory_cannot_hold_is_an_error_not_an_abort() {
        assert!(try_buffer(usize::MAX / 2).is_err());
        assert!(try_buffer(1 << 10).unwrap().capacity() >= 1 << 10);
    }
}
