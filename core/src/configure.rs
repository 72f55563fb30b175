//! One way from the plugin's configuration bytes to a worker: parse and validate the config, size
//! the near cache from it, create its slots. The adapter's root context and the tests both call
//! [`configure`], so a test's worker is built exactly as Envoy's is.

use crate::background::worker::Worker;
use crate::config::{Config, ConfigError};
use crate::host::{SharedData, SharedSetError};
use crate::l1::NearCache;
use std::fmt;

/// Bytes of bucket overhead allowed on top of the largest record, for claims and small records.
pub const SLOT_OVERHEAD: usize = 4096;

/// Why a worker could not be built.
#[derive(Debug)]
pub enum ConfigureError {
    /// The configuration is refused (the field and the reason).
    Config(ConfigError),
    /// The near-cache slots could not be created in shared data.
    Slots(SharedSetError),
}

impl fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigureError::Config(e) => write!(f, "{e}"),
            ConfigureError::Slots(e) => write!(f, "cannot create the near-cache slots: {e:?}"),
        }
    }
}

/// The worker for the configuration `bytes`, its near-cache slots created in `shared` (slots
/// another worker already created are left alone).
pub fn configure(bytes: &[u8], shared: &dyn SharedData) -> Result<Worker, ConfigureError> {
    let config = Config::parse(bytes).map_err(ConfigureError::Config)?;
    let cache = NearCache {
        slots: config.l1_slots,
        slot_budget: config.max_response_bytes.saturating_add(SLOT_OVERHEAD),
    };
    cache.ensure_slots(shared).map_err(ConfigureError::Slots)?;
    Ok(Worker::new(config, cache))
}
