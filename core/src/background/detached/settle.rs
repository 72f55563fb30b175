//! The end of a detached execution, carried out from the root context: the settlement rule
//! ([`crate::settlement`]) decides, this file stores or releases and answers the client.

use super::{DetachedJob, Ending};
use crate::background::deferred::{retry_until, Deferred};
use crate::background::worker::{Answer, Purpose, RootAction, Worker};
use crate::expiry;
use crate::grpc;
use crate::host::{Headers, SharedData};
use crate::keystore_client;
use crate::problem::Problem;
use crate::record::{message_headers, storable_headers};
use crate::reply::grpc_refusal;
use crate::reroute::RouteTo;
use crate::settlement::{self, Settlement, Verdict};
use log::{info, warn};

impl Worker {
    /// The end of a detached execution: keep, release or lock the key as the settlement rule
    /// says, exactly as for an inline request, then answer the client if it is still there.
    pub(crate) fn settle_detached(
        &self,
        job: DetachedJob,
        end: Ending,
        (headers, body, trailers): (Headers, Vec<u8>, Headers),
        shared: &dyn SharedData,
        now_ms: u64,
    ) -> Vec<RootAction> {
        self.leases.borrow_mut().drop_claim(job.claim.owner);
        let headers = match end {
            Ending::Answered(_) => with_service_time(headers, now_ms.saturating_sub(job.sent_ms)),
            _ => headers,
        };
        let (ending, mut answer) = self.detached_answer(&job, end, &headers, &body);
        // A gRPC answer is settled by its `grpc-status` (`crate::grpc::settling`).
        let ending = match ending {
            settlement::Ending::Answered(status) => settlement::Ending::Answered(
                grpc::settling::settling_status(status, &headers, &trailers),
            ),
            other => other,
        };
        let Settlement { verdict, counts } =
            settlement::settle(&job.claim.rule, job.claim.fingerprint, ending, now_ms);
        let mut actions: Vec<RootAction> = counts.into_iter().map(RootAction::Count).collect();
        let record = match verdict {
            Verdict::Keep {
                created_ms,
                expires_ms,
            } => {
                // The record keeps what replays may carry; the client got every header.
                let kept = storable_headers(headers, &self.cfg.replay_headers);
                // The client gets the upstream's trailers after its body, as a replay would.
                answer.trailers.clone_from(&trailers);
                let size = body
                    .len()
                    .saturating_add(settlement::header_bytes(&trailers));
                let body = settlement::fits(&kept, size, self.cfg.max_response_bytes)
                    .then_some((body, trailers));
                let (outcome, metric) = settlement::captured(answer.status, kept, body);
                actions.extend(metric.map(RootAction::Count));
                // An upstream answer that created the record says until when its key is honoured.
                if let Some(name) = &self.cfg.expires_header {
                    expiry::set_header(&mut answer.headers, name, expires_ms);
                }
                Some(settlement::record(
                    &job.claim.rule,
                    job.claim.fingerprint,
                    outcome,
                    created_ms,
                ))
            }
            Verdict::Lock(record) => {
                warn!(
                    "key {}: detached request ended {end:?}; outcome unknown, locked",
                    job.claim.key.short()
                );
                Some(record)
            }
            Verdict::Release => {
                info!(
                    "key {}: detached request ended {end:?}; releasing",
                    job.claim.key.short()
                );
                // Not stored, so not routed: a local reply, which reaches a gRPC caller
                // trailers-only; the service's status goes in that one block.
                if job.grpc {
                    grpc::settling::into_trailers_only(
                        &mut answer.headers,
                        &mut answer.body,
                        &trailers,
                    );
                }
                None
            }
        };
        // A replayable first answer to a gRPC caller goes through the replay listener
        // (`crate::background::routed`): as a local reply it would arrive trailers-only.
        if let Some(record) = record.as_ref().filter(|r| job.routed && r.is_replayable()) {
            answer.route = Some(Box::new(RouteTo {
                key: job.claim.key,
                record: record.clone(),
                first: true,
                grpc: job.grpc,
            }));
        }
        let write = match record {
            Some(record) => {
                if job.claim.l1 {
                    self.l1_keep(shared, &job.claim.key, job.claim.owner, &record, now_ms);
                }
                self.cfg
                    .keystore
                    .as_ref()
                    .zip(job.claim.token.as_ref())
                    .map(|(ks, token)| {
                        keystore_client::complete(
                            ks,
                            &job.claim.key,
                            token,
                            &record,
                            job.claim.rule.retention_ms,
                        )
                    })
            }
            None => {
                if job.claim.l1 {
                    self.l1_release(shared, &job.claim.key, job.claim.owner, now_ms);
                }
                self.cfg
                    .keystore
                    .as_ref()
                    .zip(job.claim.token.as_ref())
                    .map(|(ks, token)| keystore_client::release(ks, &job.claim.key, token))
            }
        };
        match write {
            // Stored before the client sees it, as inline.
            Some(callout) => actions.push(RootAction::Send(
                callout.clone(),
                Purpose::WriteThenAnswer(
                    Deferred {
                        callout,
                        not_before_ms: 0,
                        until_ms: retry_until(
                            now_ms,
                            self.cfg.lock_lease_ms,
                            job.claim.rule.retention_ms,
                        ),
                        failures: 0,
                    },
                    answer,
                ),
            )),
            None => actions.push(RootAction::Answer(answer)),
        }
        actions
    }

    /// How the settlement rule sees a detached ending, and what the client gets: the upstream's
    /// own answer with every header, or the filter's problem for an ending without one.
    fn detached_answer(
        &self,
        job: &DetachedJob,
        end: Ending,
        headers: &Headers,
        body: &[u8],
    ) -> (settlement::Ending, Answer) {
        let answer = |(status, headers, body): (u16, Headers, Vec<u8>)| Answer {
            stream_id: job.stream_id,
            status,
            headers,
            body,
            trailers: Vec::new(),
            route: None,
        };
        // The filter's own answer: a gRPC status to a gRPC caller, as Envoy's router maps them.
        let problem = |problem: Problem, detail: &str| {
            if job.grpc {
                grpc_refusal(problem, detail, 0)
            } else {
                problem.response(detail, 0)
            }
        };
        match end {
            Ending::Answered(status) => (
                settlement::Ending::Answered(status),
                answer((status, message_headers(headers.clone()), body.to_vec())),
            ),
            Ending::NotSent => (
                settlement::Ending::NotExecuted,
                answer(problem(
                    Problem::UpstreamUnavailable,
                    "the upstream could not be reached; the request was not sent",
                )),
            ),
            Ending::TimedOut => (
                settlement::Ending::Unknown,
                answer(problem(
                    Problem::UpstreamTimeout,
                    "the upstream did not answer in time; the request may have executed",
                )),
            ),
            Ending::Reset => (
                settlement::Ending::Unknown,
                answer(problem(
                    Problem::UpstreamReset,
                    "the upstream reset the request; it may have executed",
                )),
            ),
        }
    }
}

/// The field Envoy's router adds after the fields of every answer that came from an upstream.
const SERVICE_TIME: &str = "x-envoy-upstream-service-time";

/// An upstream's answer to a detached request, with `x-envoy-upstream-service-time` where the
/// router would have put it (after the upstream's fields), as the time from dispatch to the whole
/// answer in milliseconds: a callout's router does not add it, and without it a detached first
/// answer would read as a local reply. The record keeps it, so a replay carries the same value.
/// An answer that already has one (a proxy on the way added it) keeps its own.
fn with_service_time(mut headers: Headers, elapsed_ms: u64) -> Headers {
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(SERVICE_TIME))
    {
        headers.push((
            SERVICE_TIME.to_string(),
            elapsed_ms.to_string().into_bytes(),
        ));
    }
    headers
}
