//! The behaviour suite every backend must pass. `backend_suite!(factory)` instantiates it as
//! `#[tokio::test]`s for an `async fn factory() -> Arc<dyn Backend>`.
//!
//! The tests are grouped by what they exercise: [`claims`], [`abandoned`] (claims whose lease ran
//! out without an answer), [`batch`] (renewals in a batch), [`group`] (mixed calls in one batch),
//! [`http`], [`waiting`], [`admin`] and [`formats`] (JSON and compact bodies).

mod abandoned;
mod admin;
mod batch;
mod claims;
mod formats;
mod group;
mod http;
mod waiting;

pub use abandoned::*;
pub use admin::*;
pub use batch::*;
pub use claims::*;
pub use formats::*;
pub use group::*;
pub use http::*;
pub use waiting::*;

use std::sync::Arc;

use idempotency_keystore::backend::Backend;

use crate::common::{settings, Keystore};

macro_rules! backend_suite {
    ($factory:path) => {
        $crate::suite::backend_suite!(@tests $factory;
            claim_then_in_flight, completed_record_is_byte_exact, mismatch_in_both_states,
            token_fencing, release_frees_the_key, lease_takeover_after_expiry,
            retention_expiry, concurrent_claims_have_one_winner, malformed_fields_are_named,
            bearer_token_required, body_limit_gives_413, health_ready_and_metrics,
            complete_twice_is_stale, renew_extends_the_lease,
            proposed_token_is_the_claims_token,
            renew_is_fenced, waiter_gets_the_record,
            waiter_claims_after_release, waiter_takes_over_an_expired_lease,
            waiter_times_out_in_flight, twenty_waiters_get_the_record,
            waiter_answers_at_once_when_nothing_to_wait_for, wait_outlasts_the_backend_timeout,
            lookup_reports_without_claiming, complete_refuses_a_record_over_the_limit,
            admin_reports_each_state, admin_purge_says_what_it_removed,
            admin_purge_frees_a_waiting_claim, admin_token_is_its_own,
            compact_bodies_on_every_endpoint, formats_follow_content_type_and_accept,
            renew_batch_answers_each_key_in_order, renew_batch_limits_and_named_errors,
            abandoned_claim_is_reported_not_taken, late_complete_wins,
            late_release_frees_the_key, renew_revives_an_abandoned_claim,
            takeover_under_release_policy_fences_the_old_token,
            abandoned_claim_lives_for_its_retention,
            waiter_is_told_abandoned_when_the_lease_ends,
            batch_answers_each_entry_as_its_single_call,
            batch_compact_and_a_malformed_envelope, batch_entries_run_concurrently);
    };
    (@tests $factory:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::$name($factory().await).await
            }
        )*
    };
}
pub(crate) use backend_suite;

async fn open(backend: Arc<dyn Backend>) -> Keystore {
    Keystore::start(backend, settings()).await
}
