//! The root context's background work, in one place: what must happen after, or apart from, a
//! stream's own callbacks.
//!
//! - [`actions`]: what the root context is asked to do, and what its callouts' replies meant;
//! - [`agenda`]: the actions the root context carries out, a few local replies per callback;
//! - [`worker`]: the state the streams of one Envoy worker share with its root context, and the
//!   root context's steps (`on_tick`, `on_reply`) returning the actions it carries out;
//! - [`batch`]: the streams' key-store calls, gathered while others travel (group commit);
//! - [`leases`]: the claims held while their request is upstream, renewed in batches;
//! - [`deferred`]: key-store writes a stream could not finish itself, retried until they land;
//! - [`routed`]: root-context answers sent through the replay listener (gRPC callers);
//! - [`waiting`]: duplicates that wait (no key store) for the record of their key;
//! - [`detached`]: requests the plugin sends upstream itself, and how their end is carried out;
//! - [`shutdown`]: what the root context settles when Envoy unloads the plugin.

pub mod actions;
pub mod agenda;
pub mod batch;
pub mod deferred;
pub mod detached;
pub mod leases;
pub mod routed;
pub mod shutdown;
pub mod trailers;
pub mod waiting;
pub mod worker;
