//! The learned rates over a run: while a pipeline runs, a task reads the stack's learner
//! once a second and writes a `rate` line ([`RateRecord`]) to the manifest for each
//! partition whose rate moved, and once more before the summary line, so that
//! `contentdownload report` can draw each provider's learned rate over time.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::context::PartitionKey;
use crate::layers::learning::{Learner, PartitionStatus};
use crate::manifest::{ManifestLine, RateRecord, SharedManifest};

/// How often the learner is read.
pub(super) const RATE_LOG_EVERY: Duration = Duration::from_secs(1);

/// A change smaller than this share of the last written rate is not written.
const MIN_CHANGE: f64 = 0.01;

/// The running task; [`stop`](RateLog::stop) writes a last sample and returns.
pub(super) struct RateLog {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RateLog {
    /// Starts reading `learner` every `every`, writing to `manifest` under `run_id`.
    pub(super) fn spawn(learner: Learner, manifest: SharedManifest, run_id: String, every: Duration) -> RateLog {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut written = Written::default();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => written.sample(&learner, &manifest, &run_id),
                    _ = &mut stopped => {
                        written.sample(&learner, &manifest, &run_id);
                        return;
                    }
                }
            }
        });
        RateLog { stop, task }
    }

    /// Writes the rates as they are now and ends the task.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The last rate and phase written for each partition.
#[derive(Default)]
struct Written(HashMap<PartitionKey, (f64, String)>);

impl Written {
    fn sample(&mut self, learner: &Learner, manifest: &SharedManifest, run_id: &str) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let lines: Vec<ManifestLine> = learner
            .statuses()
            .into_iter()
            .filter_map(|status| self.changed(status, now_ms))
            .map(|record| ManifestLine::rate(run_id, record))
            .collect();
        if lines.is_empty() {
            return;
        }
        let Ok(mut manifest) = manifest.lock() else { return };
        for line in &lines {
            if let Err(e) = manifest.write(line) {
                tracing::debug!("could not write a learned rate to the manifest: {e}");
                return;
            }
        }
    }

    /// The record to write for `status`, if it moved since the last one written.
    fn changed(&mut self, status: PartitionStatus, now_ms: u64) -> Option<RateRecord> {
        let phase = status.phase.to_string();
        if let Some((rate, last_phase)) = self.0.get(&status.partition) {
            let moved = (status.rate - rate).abs() > rate.abs() * MIN_CHANGE;
            if !moved && *last_phase == phase {
                return None;
            }
        }
        self.0.insert(status.partition.clone(), (status.rate, phase.clone()));
        Some(RateRecord {
            timestamp_ms: now_ms,
            provider: status.partition.provider().to_string(),
            host: status.partition.host().to_owned(),
            rate: status.rate,
            ceiling: status.ceiling,
            phase,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::learning::Phase;

    fn status(rate: f64, phase: Phase) -> PartitionStatus {
        PartitionStatus {
            partition: PartitionKey::new("openalex", "api.openalex.org"),
            phase,
            rate,
            ceiling: 10.0,
            advertised: false,
            consecutive_429: 0,
            applied_reduction: 0.0,
            throttles: 0,
            successes: 0,
            recovery_times: Vec::new(),
        }
    }

    #[test]
    fn a_rate_is_written_when_it_moves_or_its_phase_does() {
        let mut w = Written::default();
        let first = w.changed(status(10.0, Phase::Normal), 1).expect("the first reading");
        assert_eq!(
            (first.provider.as_str(), first.host.as_str()),
            ("openalex", "api.openalex.org")
        );
        assert!(
            w.changed(status(10.05, Phase::Normal), 2).is_none(),
            "under 1%: not written"
        );
        assert_eq!(w.changed(status(4.9, Phase::Reducing), 3).unwrap().rate, 4.9);
        assert_eq!(
            w.changed(status(4.9, Phase::Recovering), 4).unwrap().phase,
            "recovering"
        );
        assert!(w.changed(status(4.9, Phase::Recovering), 5).is_none());
    }
}
