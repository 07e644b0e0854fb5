//! JSON persistence of the learning state, for learning across runs.
//!
//! The file is versioned (`"version": 1`), written atomically (temp file in the same
//! folder + rename) and read at start; a file that is not valid JSON of a known version
//! is renamed aside with a warning, never a crash. [`Learner::inspect`] reads it without
//! changing anything, for read-only commands.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::learner::Learner;
use super::policy::LearningPolicy;
use super::state::{PartitionState, MAX_RECOVERY_TIMES};
use crate::context::{PartitionKey, PartitionMap};
use crate::layers::rate_limit::RateLimiter;

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LearningFile {
    version: u32,
    policy: String,
    saved_at_unix: u64,
    partitions: Vec<PartitionRecord>,
    /// Partitions whose allowance is spent, until their reset (Unix seconds): a later run,
    /// or `status`, knows it without asking the provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quota_spent: Vec<QuotaRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct QuotaRecord {
    provider: String,
    host: String,
    resets_at_unix: u64,
}

/// What a learning file holds: each partition's state, and the spent allowances with their
/// reset.
pub(super) type Loaded = (PartitionMap<PartitionState>, Vec<(PartitionKey, SystemTime)>);

#[derive(Debug, Serialize, Deserialize)]
struct PartitionRecord {
    provider: String,
    host: String,
    rate: f64,
    #[serde(default)]
    advertised: Option<f64>,
    #[serde(default)]
    consecutive_429: u32,
    #[serde(default)]
    reduction: f64,
    #[serde(default)]
    recovery_times_secs: Vec<f64>,
    #[serde(default)]
    throttles: u64,
    #[serde(default)]
    successes: u64,
    /// Adaptive: the remembered ceiling (the rate the provider last pushed back at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceiling_seen: Option<f64>,
    /// Adaptive: how many times that ceiling was confirmed.
    #[serde(default)]
    ceiling_confirmations: u32,
}

/// Saving the learning state failed.
#[derive(Debug, thiserror::Error)]
#[error("could not save provider learning to {}: {source}; check that the folder exists and is writable", .path.display())]
pub struct PersistError {
    /// The file being written.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) fn snapshot(
    states: &PartitionMap<PartitionState>,
    pauses: &[(PartitionKey, SystemTime)],
    policy: &LearningPolicy,
    now: SystemTime,
) -> LearningFile {
    let mut partitions: Vec<PartitionRecord> = states
        .iter()
        .map(|(key, s)| PartitionRecord {
            provider: key.provider().as_str().to_owned(),
            host: key.host().to_owned(),
            rate: s.rate,
            advertised: s.advertised,
            consecutive_429: s.consecutive_429,
            reduction: s.reduction,
            recovery_times_secs: s.recovery_times.iter().map(Duration::as_secs_f64).collect(),
            throttles: s.throttles,
            successes: s.successes,
            ceiling_seen: (s.confirmations > 0).then_some(s.w_max),
            ceiling_confirmations: s.confirmations,
        })
        .collect();
    partitions.sort_by(|a, b| (&a.provider, &a.host).cmp(&(&b.provider, &b.host)));
    LearningFile {
        version: FORMAT_VERSION,
        policy: policy.name().to_owned(),
        saved_at_unix: unix(now),
        partitions,
        quota_spent: pauses
            .iter()
            .map(|(key, at)| QuotaRecord {
                provider: key.provider().as_str().to_owned(),
                host: key.host().to_owned(),
                resets_at_unix: unix(*at),
            })
            .collect(),
    }
}

pub(super) fn write_atomic(path: &Path, file: &LearningFile) -> Result<(), PersistError> {
    let err = |source| PersistError {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(file).map_err(|e| err(io::Error::other(e)))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".learning-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(&json).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

fn valid_rate(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// The provider learning file exists but cannot be used (unreadable, not JSON, an unknown
/// format version). A run moves such a file aside and starts fresh; `status`, which must
/// not change the folder, reports it and leaves it ([`Learner::inspect`]).
#[derive(Debug, thiserror::Error)]
#[error("the provider learning file {} cannot be used: {reason}", .path.display())]
pub struct LearningFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
    /// Whether its content is at fault (a run moves it aside), rather than reading it.
    pub corrupt: bool,
}

/// Reads the file into per-partition states without touching it: a missing file is an
/// empty state, a bad one an error.
pub(super) fn read(path: &Path, limiter: &RateLimiter) -> Result<Loaded, LearningFileError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => {
            return Err(LearningFileError {
                path: path.to_owned(),
                reason: format!("cannot read it ({e})"),
                corrupt: false,
            })
        }
    };
    let file = parse(&text).map_err(|reason| LearningFileError {
        path: path.to_owned(),
        reason,
        corrupt: true,
    })?;
    let pauses = file
        .quota_spent
        .iter()
        .map(|q| {
            let key = PartitionKey::new(q.provider.clone(), q.host.clone());
            (key, UNIX_EPOCH + Duration::from_secs(q.resets_at_unix))
        })
        .collect();
    Ok((states_of(file, limiter), pauses))
}

/// Reads the file into per-partition states; see the module docs for what happens to a
/// bad file.
pub(super) fn load(path: &Path, limiter: &RateLimiter, now: SystemTime) -> Loaded {
    match read(path, limiter) {
        Ok(loaded) => loaded,
        Err(e) if e.corrupt => {
            set_aside(path, &e.reason, now);
            Loaded::default()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e.reason, "cannot read the provider learning file; learning starts fresh");
            Loaded::default()
        }
    }
}

fn states_of(file: LearningFile, limiter: &RateLimiter) -> PartitionMap<PartitionState> {
    let mut states = PartitionMap::default();
    for rec in file.partitions {
        let key = PartitionKey::new(rec.provider, rec.host);
        if !valid_rate(rec.rate) || rec.advertised.is_some_and(|a| !valid_rate(a)) {
            tracing::warn!(partition = %key, "skipping a partition with an invalid rate in the provider learning file");
            continue;
        }
        let mut state = PartitionState::new(limiter.configured(&key).rate);
        state.advertised = rec.advertised;
        state.rate = rec.rate.min(state.ceiling());
        state.consecutive_429 = rec.consecutive_429;
        state.reduction = rec.reduction.clamp(0.0, 1.0);
        state.throttles = rec.throttles;
        state.successes = rec.successes;
        if let Some(w) = rec.ceiling_seen.filter(|w| valid_rate(*w)) {
            state.w_max = w;
            state.confirmations = rec.ceiling_confirmations.max(1);
        }
        state.recovery_times = rec
            .recovery_times_secs
            .iter()
            .filter(|s| s.is_finite() && **s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(1e9)))
            .collect::<VecDeque<_>>();
        while state.recovery_times.len() > MAX_RECOVERY_TIMES {
            state.recovery_times.pop_front();
        }
        states.insert(key, state);
    }
    states
}

fn parse(text: &[u8]) -> Result<LearningFile, String> {
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not valid JSON ({e})"))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "unknown format version {v} (this build reads {FORMAT_VERSION})"
            ))
        }
        None => return Err("no format version".to_owned()),
    }
    serde_json::from_value(value).map_err(|e| format!("not a provider learning file ({e})"))
}

fn set_aside(path: &Path, reason: &str, now: SystemTime) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{}", unix(now)));
    let aside = PathBuf::from(aside);
    match std::fs::rename(path, &aside) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            moved_to = %aside.display(),
            reason,
            "the provider learning file could not be used and was moved aside; learning starts fresh"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            reason,
            error = %e,
            "the provider learning file could not be used nor moved aside; learning starts fresh and will overwrite it"
        ),
    }
}

/// A background task saving a [`Learner`] every period, and once more on
/// [`shutdown`](Self::shutdown). Started by [`Learner::spawn_persist_task`].
#[derive(Debug)]
pub struct PersistTask {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
    learner: Learner,
}

impl PersistTask {
    /// Stops the periodic saves and saves one last time (call it on shutdown).
    pub async fn shutdown(mut self) -> Result<(), PersistError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.handle).await;
        persist_blocking(self.learner.clone()).await
    }
}

async fn persist_blocking(learner: Learner) -> Result<(), PersistError> {
    let path = learner.path().map(Path::to_owned).unwrap_or_default();
    match tokio::task::spawn_blocking(move || learner.persist()).await {
        Ok(result) => result,
        Err(e) => Err(PersistError {
            path,
            source: io::Error::other(e),
        }),
    }
}

impl Learner {
    /// Spawns a task on the current tokio runtime that saves the state every `every`
    /// (failures are logged at WARN and retried next period). Call
    /// [`PersistTask::shutdown`] on shutdown for a final save.
    ///
    /// # Panics
    /// Outside a tokio runtime, or if `every` is zero (as `tokio::time::interval`).
    pub fn spawn_persist_task(&self, every: Duration) -> PersistTask {
        let (stop, mut stopped) = oneshot::channel();
        let learner = self.clone();
        let handle = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if let Err(e) = persist_blocking(learner.clone()).await {
                            tracing::warn!(error = %e, "periodic save of provider learning failed");
                        }
                    }
                    _ = &mut stopped => return,
                }
            }
        });
        PersistTask {
            stop: Some(stop),
            handle,
            learner: self.clone(),
        }
    }
}
