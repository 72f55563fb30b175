//! The suite on the in-process backend.

use std::sync::Arc;

use idempotency_keystore::backend::memory::MemoryBackend;
use idempotency_keystore::backend::Backend;

async fn backend() -> Arc<dyn Backend> {
    Arc::new(MemoryBackend::new(10_000))
}

crate::suite::backend_suite!(backend);
