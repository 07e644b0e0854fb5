use std::time::Duration;

use tower_layer::Layer;

use super::service::RetryAfter;
use super::state::Cooldowns;

/// The longest cool-down a request waits out by default before failing with
/// [`CoolingDown`](crate::error::CoolingDown).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);

/// Applies [`RetryAfter`] to a service: parses providers' wait hints and keeps a
/// per-partition cool-down.
///
/// The layer holds the configuration and a handle to the shared [`Cooldowns`]: every
/// service it builds (and every clone of the layer) shares the same cool-downs.
#[derive(Clone, Debug)]
pub struct RetryAfterLayer {
    max_wait: Duration,
    cooldowns: Cooldowns,
    call_key: bool,
}

impl RetryAfterLayer {
    /// A layer with the default maximum wait (5 s) and fresh cool-down state.
    pub fn new() -> Self {
        RetryAfterLayer {
            max_wait: DEFAULT_MAX_WAIT,
            cooldowns: Cooldowns::new(),
            call_key: false,
        }
    }

    /// Takes the partition key the stack's retry layer shares for the call under way
    /// (`context::clock`), when there is one, instead of caching it in the request: only
    /// for the [`Stack`](crate::service::Stack).
    pub(crate) fn with_call_key(mut self) -> Self {
        self.call_key = true;
        self
    }

    /// Sets the longest cool-down a request waits out; a longer one fails at once with
    /// [`CoolingDown`](crate::error::CoolingDown). `Duration::ZERO` never waits.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Uses these cool-downs (shared with whoever else holds the handle).
    pub fn with_cooldowns(mut self, cooldowns: Cooldowns) -> Self {
        self.cooldowns = cooldowns;
        self
    }

    /// The cool-down state the built services share.
    pub fn cooldowns(&self) -> &Cooldowns {
        &self.cooldowns
    }
}

impl Default for RetryAfterLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RetryAfterLayer {
    type Service = RetryAfter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut service = RetryAfter::new(inner, self.max_wait, self.cooldowns.clone());
        service.call_key = self.call_key;
        service
    }
}
