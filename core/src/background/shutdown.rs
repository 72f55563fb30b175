//! Leaving cleanly: when Envoy unloads the plugin (its root context's `on_done`), the root context
//! settles what it holds, where the host still lets it send callouts (docs/hardening.md, "Leaving
//! cleanly", says which shutdown paths call the plugin at all).
//!
//! - Deferred writes (records, releases) go out at once, even those that were to wait.
//! - Detached executions not yet sent upstream were never forwarded: their claims are released.
//! - Detached executions at the upstream may have executed: the settlement rule makes them an
//!   unknown outcome (locked, or released under `unknown_outcome: "release"`), as a reset would.
//! - Inline requests at the upstream are left to their lease: the key store reports the claim
//!   abandoned when it runs out, which answers as an unknown outcome under `"lock"` and is taken
//!   over under `"release"`, the same two results with no write needed.

use super::detached::Ending;
use super::worker::{Purpose, RootAction, Worker};
use crate::host::SharedData;
use log::info;

impl Worker {
    /// What the root context sends (and answers) as the plugin is unloaded.
    pub fn on_shutdown(&self, shared: &dyn SharedData, now_ms: u64) -> Vec<RootAction> {
        let queued = std::mem::take(&mut *self.detached_queue.borrow_mut());
        let running: Vec<_> = self.detached_running.borrow_mut().drain().collect();
        let mut actions = Vec::new();
        for job in &queued {
            info!(
                "key {}: unloading: detached request never sent; releasing",
                job.claim.key.short()
            );
        }
        for job in queued {
            actions.extend(self.settle_detached(
                job,
                Ending::NotSent,
                Default::default(),
                shared,
                now_ms,
            ));
        }
        let forwarded = running.len();
        for (_, job) in running {
            actions.extend(self.settle_detached(
                job,
                Ending::Reset,
                Default::default(),
                shared,
                now_ms,
            ));
        }
        let writes = self.writes.borrow_mut().take_all();
        let inline = self.leases.borrow().len();
        info!(
            "unloading: {} deferred write(s) sent now, {forwarded} detached request(s) at the upstream settled as unknown outcomes, {} inline claim(s) left to their lease",
            writes.len(),
            inline,
        );
        actions.extend(
            writes
                .into_iter()
                .map(|d| RootAction::Send(d.callout.clone(), Purpose::Write(d))),
        );
        actions
    }
}
