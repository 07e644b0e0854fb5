#![cfg(feature = "simulator")]
//! The job ledger, one suite run against every backend: SQLite always, PostgreSQL when
//! `CONTENTDOWNLOAD_TEST_POSTGRES_URL` names a server (CI starts one and requires it).

mod ledger_support;

use std::time::Duration;

use contentdownload::context::{IdempotencyKey, WorkId};
use contentdownload::ledger::{
    Claim, JobId, JobResult, JobState, LeaseOwner, Ledger, LedgerConfig, LedgerError, NewJob, OpKey, OpStart, OpStatus,
};
use ledger_support::{backends, backends_with};

const TTL: Duration = Duration::from_secs(30);

fn job(run: &str, i: usize) -> NewJob {
    NewJob {
        run_id: run.to_owned(),
        work_id: WorkId::new(format!("W{i}")),
        key: IdempotencyKey::new(format!("{run}-key-{i}")),
        canonical_url: format!("https://example.org/{i}.pdf"),
    }
}

#[tokio::test]
async fn planning_is_idempotent() {
    for t in backends("planning_is_idempotent").await {
        let l = &t.ledger;
        let a = l.plan(&job("r", 1)).await.unwrap();
        let b = l.plan(&job("r", 1)).await.unwrap();
        assert_eq!(a.id, b.id, "{}", t.name);
        assert_eq!(a.state, JobState::Planned);
        assert_eq!(a.attempts, 0);
        // the same key from another run is still the same job
        let mut other = job("r", 1);
        other.run_id = "r2".into();
        assert_eq!(l.plan(&other).await.unwrap().run_id, "r");
        let ids = l
            .plan_many(&[job("r", 2), job("r", 1), job("r", 2), job("r", 3)])
            .await
            .unwrap();
        assert_eq!(ids[0], ids[2]);
        assert_eq!(ids[1], a.id);
        assert_eq!(l.counts(Some("r")).await.unwrap().planned, 3, "{}", t.name);
        assert_eq!(l.counts(None).await.unwrap().total(), 3);
        let by_key = l.get_by_key(&IdempotencyKey::new("r-key-3")).await.unwrap().unwrap();
        assert_eq!(by_key.id, ids[3]);
        assert_eq!(by_key.canonical_url, "https://example.org/3.pdf");
        assert!(l.get(JobId(999_999)).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_lease_goes_to_one_worker() {
    for t in backends("a_lease_goes_to_one_worker").await {
        let l = &t.ledger;
        l.plan_many(&(0..10).map(|i| job("r", i)).collect::<Vec<_>>())
            .await
            .unwrap();
        l.plan(&job("other", 0)).await.unwrap();
        let a = l.lease(Some("r"), "A", 4, TTL).await.unwrap();
        let b = l.lease(Some("r"), "B", 100, TTL).await.unwrap();
        assert_eq!((a.len(), b.len()), (4, 6), "{}", t.name);
        assert!(a
            .iter()
            .all(|j| j.lease_owner.as_deref() == Some("A") && j.attempts == 1));
        assert!(a
            .iter()
            .all(|j| j.state == JobState::Leased && j.lease_expires_at.is_some()));
        assert!(a.iter().all(|ja| b.iter().all(|jb| ja.id != jb.id)));
        assert!(a.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
        assert!(l.lease(Some("r"), "C", 10, TTL).await.unwrap().is_empty());
        // without a run filter, the other run's job is found
        let c = l.lease(None, "C", 10, TTL).await.unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].run_id, "other");
    }
}

#[tokio::test]
async fn every_transition_is_conditional() {
    for t in backends("every_transition_is_conditional").await {
        let l = &t.ledger;
        let planned = l.plan(&job("r", 0)).await.unwrap().id;
        // a PLANNED job cannot be finished
        let e = l
            .finish(planned, "A", JobState::Finalized, &JobResult::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                LedgerError::IllegalTransition {
                    from: JobState::Planned,
                    to: JobState::Finalized,
                    ..
                }
            ),
            "{}: {e}",
            t.name
        );
        let leased = l.lease(Some("r"), "A", 1, TTL).await.unwrap().remove(0).id;
        // not by another worker
        let e = l
            .finish(leased, "B", JobState::Finalized, &JobResult::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, LedgerError::LeaseNotHeld { holder: Some(h), .. } if h == "A"),
            "{e}"
        );
        // not to a state that is not final
        let e = l
            .finish(leased, "A", JobState::Planned, &JobResult::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                LedgerError::IllegalTransition {
                    to: JobState::Planned,
                    ..
                }
            ),
            "{e}"
        );
        let result = JobResult {
            outcome: Some("pdf".into()),
            path: Some("W0.pdf".into()),
            sha256: Some("ab".repeat(32)),
            bytes: Some(1234),
            reason: None,
        };
        l.finish(leased, "A", JobState::Finalized, &result).await.unwrap();
        let done = l.get(leased).await.unwrap().unwrap();
        assert_eq!(
            (done.state, done.result.clone(), done.lease_owner),
            (JobState::Finalized, result, None)
        );
        // finishing twice is an illegal transition, not a silent no-op
        let e = l
            .finish(leased, "A", JobState::Finalized, &JobResult::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                LedgerError::IllegalTransition {
                    from: JobState::Finalized,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            l.finish(JobId(987_654), "A", JobState::Failed, &JobResult::default())
                .await,
            Err(LedgerError::NotFound(JobId(987_654)))
        ));
        // release, requeue and skip
        l.plan(&job("r", 1)).await.unwrap();
        let j = l.lease(Some("r"), "A", 1, TTL).await.unwrap().remove(0);
        assert!(matches!(
            l.release(j.id, "B").await,
            Err(LedgerError::LeaseNotHeld { .. })
        ));
        l.release(j.id, "A").await.unwrap();
        let again = l.lease(Some("r"), "B", 1, TTL).await.unwrap().remove(0);
        assert_eq!((again.id, again.attempts), (j.id, 2));
        l.finish(again.id, "B", JobState::Deferred, &JobResult::reason("429"))
            .await
            .unwrap();
        assert_eq!(l.requeue_all(Some("r"), JobState::Deferred).await.unwrap(), 1);
        assert!(l.requeue_all(Some("r"), JobState::Finalized).await.is_err());
        let j = l.lease(Some("r"), "B", 1, TTL).await.unwrap().remove(0);
        l.finish(j.id, "B", JobState::Failed, &JobResult::reason("404"))
            .await
            .unwrap();
        l.requeue(j.id).await.unwrap();
        assert!(matches!(
            l.requeue(leased).await,
            Err(LedgerError::IllegalTransition { .. })
        ));
        l.skip(j.id, "already on disk").await.unwrap();
        let skipped = l.get(j.id).await.unwrap().unwrap();
        assert_eq!(skipped.state, JobState::Skipped);
        assert_eq!(skipped.result.reason.as_deref(), Some("already on disk"));
        assert!(matches!(
            l.skip(j.id, "again").await,
            Err(LedgerError::IllegalTransition { .. })
        ));
        // batched finishing reports each item
        l.plan_many(&[job("r", 5), job("r", 6)]).await.unwrap();
        let two = l.lease(Some("r"), "C", 2, TTL).await.unwrap();
        let res = l
            .finish_many(
                "C",
                &[
                    (two[0].id, JobState::Finalized, JobResult::outcome("pdf")),
                    (two[0].id, JobState::Finalized, JobResult::outcome("pdf")),
                    (two[1].id, JobState::Skipped, JobResult::reason("dup")),
                ],
            )
            .await
            .unwrap();
        assert!(res[0].is_ok() && res[2].is_ok());
        assert!(matches!(res[1], Err(LedgerError::IllegalTransition { .. })));
        let c = l.counts(Some("r")).await.unwrap();
        assert_eq!((c.finalized, c.skipped, c.total()), (2, 2, 4), "{}", t.name);
    }
}

#[tokio::test]
async fn expired_leases_return_to_planned_and_unfinished_ops_are_abandoned() {
    for t in backends("expired_leases_return").await {
        let l = &t.ledger;
        l.plan_many(&(0..3).map(|i| job("r", i)).collect::<Vec<_>>())
            .await
            .unwrap();
        let leased = l.lease(Some("r"), "dead", 2, Duration::from_secs(5)).await.unwrap();
        let live = l.lease(Some("r"), "live", 1, Duration::from_secs(600)).await.unwrap();
        let OpStart::Started(op) = l.start_op(leased[0].id, "STREAM", "https://x/0", "dead").await.unwrap() else {
            panic!("a new op starts");
        };
        let OpStart::Started(live_op) = l.start_op(live[0].id, "STREAM", "https://x/2", "live").await.unwrap() else {
            panic!("a new op starts");
        };
        // nothing has expired yet
        assert_eq!(l.reconcile().await.unwrap().leases_reclaimed, 0);
        // the dead worker sends no heartbeat; the live one does
        l.clock().advance(Duration::from_secs(6));
        assert_eq!(
            l.heartbeat("live", &[live[0].id], Duration::from_secs(600))
                .await
                .unwrap(),
            1
        );
        let r = l.reconcile().await.unwrap();
        assert_eq!((r.leases_reclaimed, r.ops_abandoned), (2, 1), "{}", t.name);
        for j in &leased {
            let j = l.get(j.id).await.unwrap().unwrap();
            // not left LEASED (the seed project's bug): back to PLANNED, the attempt counted
            assert_eq!(
                (j.state, j.lease_owner, j.lease_expires_at, j.attempts),
                (JobState::Planned, None, None, 1)
            );
        }
        let ops = l.ops(leased[0].id).await.unwrap();
        assert_eq!(ops[0].status, OpStatus::Abandoned);
        assert_eq!(l.ops(live[0].id).await.unwrap()[0].status, OpStatus::Started);
        // the dead worker's late finish is refused once someone else holds the job
        let again = l.lease(Some("r"), "new", 10, TTL).await.unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|j| j.attempts == 2));
        let e = l
            .finish(leased[0].id, "dead", JobState::Finalized, &JobResult::default())
            .await
            .unwrap_err();
        assert!(matches!(e, LedgerError::LeaseNotHeld { .. }), "{e}");
        // the abandoned op restarts, finishes once, and is then only reported
        match l.start_op(leased[0].id, "STREAM", "https://x/0", "new").await.unwrap() {
            OpStart::Restarted(old) => assert_eq!((old.key, old.owner.as_str()), (op.clone(), "dead")),
            other => panic!("expected a restart, got {other:?}"),
        }
        l.finish_op(&op, "200 OK, 1234 bytes").await.unwrap();
        match l.start_op(leased[0].id, "STREAM", "https://x/0", "new").await.unwrap() {
            OpStart::AlreadyFinished(done) => assert_eq!(done.result.as_deref(), Some("200 OK, 1234 bytes")),
            other => panic!("expected the finished op, got {other:?}"),
        }
        assert!(matches!(
            l.finish_op(&op, "again").await,
            Err(LedgerError::OpNotOpen { .. })
        ));
        assert!(matches!(
            l.start_op(live[0].id, "STREAM", "https://x/2", "live").await.unwrap(),
            OpStart::InProgress(_)
        ));
        l.finish_op(&live_op, "ok").await.unwrap();
        // a heartbeat from a worker that lost its lease renews nothing
        assert_eq!(l.heartbeat("dead", &[leased[0].id], TTL).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn old_unfinished_ops_without_a_live_lease_are_abandoned() {
    let ttl = Duration::from_secs(10);
    for t in backends_with("old_unfinished_ops", |c| c.lease_ttl = ttl).await {
        let l = &t.ledger;
        let a = l.plan(&job("r", 0)).await.unwrap();
        let b = l.plan(&job("r", 1)).await.unwrap();
        l.lease(Some("r"), "w", 1, Duration::from_secs(3600)).await.unwrap(); // a: long, live lease
        l.start_op(a.id, "HEAD", "u", "w").await.unwrap();
        l.start_op(b.id, "HEAD", "u", "w").await.unwrap(); // b has no lease
        l.clock().advance(Duration::from_secs(5));
        assert_eq!(l.reconcile().await.unwrap().ops_abandoned, 0, "younger than the TTL");
        l.clock().advance(Duration::from_secs(6));
        let r = l.reconcile().await.unwrap();
        assert_eq!((r.ops_abandoned, r.leases_reclaimed), (1, 0), "{}", t.name);
        assert_eq!(l.ops(b.id).await.unwrap()[0].status, OpStatus::Abandoned);
        assert_eq!(
            l.ops(a.id).await.unwrap()[0].status,
            OpStatus::Started,
            "a live lease covers it"
        );
    }
}

#[tokio::test]
async fn claims_lease_settle_or_refuse() {
    for t in backends("claims_lease_settle_or_refuse").await {
        let l = &t.ledger;
        let j = job("r", 0);
        let Claim::Leased(first) = l.claim(&j, "A", TTL).await.unwrap() else {
            panic!("new key is leased")
        };
        assert_eq!(first.attempts, 1);
        // the holder may claim again without counting another attempt
        let Claim::Leased(again) = l.claim(&j, "A", TTL).await.unwrap() else {
            panic!("holder re-claims")
        };
        assert_eq!((again.id, again.attempts), (first.id, 1));
        assert!(
            matches!(l.claim(&j, "B", TTL).await.unwrap(), Claim::Busy(b) if b.lease_owner.as_deref() == Some("A"))
        );
        // an expired lease can be taken over
        l.clock().advance(TTL + Duration::from_secs(1));
        let Claim::Leased(taken) = l.claim(&j, "B", TTL).await.unwrap() else {
            panic!("expired lease is taken")
        };
        assert_eq!(taken.attempts, 2);
        l.finish(taken.id, "B", JobState::Failed, &JobResult::reason("503"))
            .await
            .unwrap();
        // a failed job is tried again by whoever claims it next
        let Claim::Leased(retry) = l.claim(&j, "C", TTL).await.unwrap() else {
            panic!("failed job re-runs")
        };
        l.finish(retry.id, "C", JobState::Finalized, &JobResult::outcome("pdf"))
            .await
            .unwrap();
        match l.claim(&j, "D", TTL).await.unwrap() {
            Claim::Settled(s) => assert_eq!(s.result.outcome.as_deref(), Some("pdf")),
            other => panic!("{}: expected settled, got {other:?}", t.name),
        }
    }
}

/// Several workers of one run: a job another worker FAILED after this run started is
/// reported, not leased; one that failed before it (an earlier run) is leased again. Both
/// paths: the batched claim and the single one after it.
#[tokio::test]
async fn a_failure_since_the_run_started_is_not_claimed_again() {
    for t in backends("a_failure_since_the_run_started_is_not_claimed_again").await {
        let l = &t.ledger;
        let j = job("r", 0);
        let earlier = job("r", 1);
        for j in [&j, &earlier] {
            let Claim::Leased(a) = l.claim(j, "A", TTL).await.unwrap() else {
                panic!("new key is leased")
            };
            l.finish(a.id, "A", JobState::Failed, &JobResult::reason("http_status"))
                .await
                .unwrap();
        }
        let failed_at = l.clock().now_ms();
        // a run that started before those failures leaves them to the next run
        let since = Some(failed_at - 1_000);
        for _ in 0..2 {
            match l.claim_unless_failed_since(&j, "B", TTL, since).await.unwrap() {
                Claim::Settled(s) => {
                    assert_eq!(s.state, JobState::Failed, "{}", t.name);
                    assert_eq!(s.result.reason.as_deref(), Some("http_status"));
                    assert_eq!(s.attempts, 1, "{}: no attempt counted", t.name);
                }
                other => panic!("{}: expected the sibling's failure, got {other:?}", t.name),
            }
        }
        // a run that started after them tries again, as does a plain claim
        l.clock().advance(Duration::from_secs(1));
        let later = Some(l.clock().now_ms());
        let Claim::Leased(b) = l.claim_unless_failed_since(&j, "B", TTL, later).await.unwrap() else {
            panic!("{}: a failure from before the run is tried again", t.name)
        };
        assert_eq!(b.attempts, 2);
        let Claim::Leased(c) = l.claim(&earlier, "C", TTL).await.unwrap() else {
            panic!("{}: a plain claim takes a failed job", t.name)
        };
        assert_eq!(c.attempts, 2);
    }
}

/// A group claim (the runner claims the next works of its input together) leases what
/// the single claim would and nothing else: not a job another worker holds, nor one that
/// is settled or FAILED since the run started; what it leaves is explained by the single
/// claim. Two handles (two processes) claiming the same new keys in groups at the same
/// time share them out, each job to one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_claim_leases_what_a_single_claim_would() {
    for t in backends("a_group_claim_leases_what_a_single_claim_would").await {
        let l = &t.ledger;
        let n = t.name;
        let Claim::Leased(_) = l.claim(&job("g", 0), "A", TTL).await.unwrap() else {
            panic!("{n}: new key")
        };
        for (i, to) in [(1, JobState::Failed), (2, JobState::Finalized)] {
            let Claim::Leased(j) = l.claim(&job("g", i), "A", TTL).await.unwrap() else {
                panic!("{n}: new key")
            };
            l.finish(j.id, "A", to, &JobResult::reason("x")).await.unwrap();
        }
        l.plan(&job("g", 4)).await.unwrap();
        let since = Some(l.clock().now_ms() - 1_000);
        let group: Vec<NewJob> = [0, 1, 2, 3, 4, 3].into_iter().map(|i| job("g", i)).collect();
        let got = l.claim_group(&group, "B", TTL, since).await;
        assert_eq!(got.len(), 6, "{n}");
        assert!(got[0].is_none() && got[1].is_none() && got[2].is_none(), "{n}: {got:?}");
        let new = got[3].as_ref().unwrap_or_else(|| panic!("{n}: a new key is leased"));
        assert_eq!(
            (new.lease_owner.as_deref(), new.attempts, new.state),
            (Some("B"), 1, JobState::Leased)
        );
        // what the group says of a job is what the ledger holds, field for field (the
        // new key's row is the one of its second claim, when there was one)
        let latest = if got[5].is_some() { [4, 5] } else { [3, 4] };
        for leased in latest.iter().filter_map(|&i| got[i].as_ref()) {
            assert_eq!(l.get(leased.id).await.unwrap().as_ref(), Some(leased), "{n}");
        }
        // a key twice in a group is leased once; the second is claimed alone, by its holder
        if let Some(again) = &got[5] {
            assert_eq!((again.id, again.attempts), (new.id, 1), "{n}");
        }
        // PostgreSQL leaves existing keys to the single claim; SQLite leases a planned one
        if let Some(planned) = &got[4] {
            assert_eq!(
                (planned.lease_owner.as_deref(), planned.attempts),
                (Some("B"), 1),
                "{n}"
            );
        }
        // what the group left is explained one at a time, as before
        assert!(matches!(
            l.claim_unless_failed_since(&job("g", 0), "B", TTL, since)
                .await
                .unwrap(),
            Claim::Busy(_)
        ));
        assert!(
            matches!(l.claim_unless_failed_since(&job("g", 1), "B", TTL, since).await.unwrap(), Claim::Settled(j) if j.state == JobState::Failed)
        );
        assert!(
            matches!(l.claim_unless_failed_since(&job("g", 2), "B", TTL, since).await.unwrap(), Claim::Settled(j) if j.state == JobState::Finalized)
        );
        assert!(matches!(l.claim(&job("g", 4), "B", TTL).await.unwrap(), Claim::Leased(j) if j.attempts == 1));

        // a claim given back unused takes its attempt back, by its holder only
        assert!(
            matches!(l.unclaim(new.id, "A").await, Err(LedgerError::LeaseNotHeld { .. })),
            "{n}"
        );
        l.unclaim(new.id, "B").await.unwrap();
        let back = l.get(new.id).await.unwrap().unwrap();
        assert_eq!(
            (back.state, back.attempts, back.lease_owner),
            (JobState::Planned, 0, None),
            "{n}"
        );

        // two handles, as two processes: every key to exactly one of them
        let other = Ledger::connect(t.config.clone()).await.unwrap();
        let keys: Vec<NewJob> = (100..400).map(|i| job("g", i)).collect();
        let claim_all = |ledger: Ledger, owner: &'static str, keys: Vec<NewJob>| {
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for group in keys.chunks(32) {
                    mine.extend(ledger.claim_group(group, owner, TTL, None).await.into_iter().flatten());
                }
                // what the groups left, alone (the runner's path)
                for k in &keys {
                    if !mine.iter().any(|j| j.key.as_str() == k.key.as_str()) {
                        if let Claim::Leased(j) = ledger.claim(k, owner, TTL).await.unwrap() {
                            mine.push(j);
                        }
                    }
                }
                mine
            })
        };
        let mut reversed = keys.clone();
        reversed.reverse();
        let (a, b) = (claim_all(l.clone(), "P", keys.clone()), claim_all(other, "Q", reversed));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let mut ids: Vec<i64> = a.iter().chain(&b).map(|j| j.id.0).collect();
        ids.sort_unstable();
        let total = ids.len();
        ids.dedup();
        assert_eq!(
            (ids.len(), total),
            (keys.len(), keys.len()),
            "{n}: each key leased once, by one owner"
        );
        assert!(a.iter().all(|j| j.lease_owner.as_deref() == Some("P")), "{n}");
        assert!(b.iter().all(|j| j.lease_owner.as_deref() == Some("Q")), "{n}");
    }
}

#[tokio::test]
async fn op_results_are_capped_and_migrations_are_idempotent() {
    for t in backends_with("op_results_are_capped", |c| c.max_op_result_bytes = 16).await {
        let l = &t.ledger;
        let j = l.plan(&job("r", 0)).await.unwrap();
        let OpStart::Started(k) = l.start_op(j.id, "FINALIZE", "", "w").await.unwrap() else {
            panic!()
        };
        assert_eq!(k, OpKey::of("FINALIZE", j.id, ""));
        l.finish_op(&k, &"x".repeat(1000)).await.unwrap();
        let stored = l.ops(j.id).await.unwrap().remove(0).result.unwrap();
        assert!(stored.len() <= 16 && stored.ends_with('…'), "{}: {stored:?}", t.name);
        // opening the same database again re-runs the migrator: nothing to do, data kept
        assert_eq!(l.schema_version().await.unwrap(), 3);
        let again = Ledger::connect(t.config.clone()).await.unwrap();
        assert_eq!(again.get(j.id).await.unwrap().unwrap().key, j.key);
        assert_eq!(again.schema_version().await.unwrap(), 3);
        if t.name == "sqlite" {
            let wal = format!("{}-wal", t.config.url);
            assert!(std::path::Path::new(&wal).exists(), "SQLite runs in WAL mode: {wal}");
        }
        again.close().await;
    }
}

#[tokio::test]
async fn bad_configuration_is_reported_by_field() {
    let e = Ledger::connect(LedgerConfig {
        max_connections: 0,
        ..LedgerConfig::new("x.sqlite3")
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("max_connections"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    // a missing folder is an error, and nothing is created
    let missing = dir.path().join("new/dir");
    let e = Ledger::open(&format!("sqlite://{}/l.db", missing.display()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!dir.path().join("new").exists(), "no folder was made");
    std::fs::write(dir.path().join("a-file"), b"x").unwrap();
    let e = Ledger::open(&format!("sqlite://{}/a-file/l.db", dir.path().display()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a-file does not exist"), "{e}");
    // an unknown scheme is named, not taken for a file name
    let here = std::env::current_dir().unwrap();
    for url in ["mysql://x", "mysql:x/l.db", "http://h/l.db"] {
        let e = Ledger::open(url).await.unwrap_err();
        assert!(e.to_string().contains("unknown ledger scheme"), "{url}: {e}");
    }
    assert!(!here.join("mysql:").exists() && !here.join("mysql:x").exists());
    // a plain path and a sqlite: URL in an existing folder open
    let plain = Ledger::open(dir.path().join("plain.db").to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(plain.counts(None).await.unwrap().total(), 0);
    let url = Ledger::open(&format!("sqlite://{}/url.db", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(url.counts(None).await.unwrap().total(), 0);
    #[cfg(not(feature = "postgres"))]
    {
        let e = Ledger::open("postgres://u@127.0.0.1:1/db").await.unwrap_err();
        assert!(e.to_string().contains("`postgres` feature"), "{e}");
    }
}

#[tokio::test]
async fn a_finalized_job_whose_file_is_gone_is_replanned_once() {
    for t in backends("a_finalized_job_whose_file_is_gone_is_replanned_once").await {
        let l = &t.ledger;
        let j = job("r", 0);
        let Claim::Leased(first) = l.claim(&j, "A", TTL).await.unwrap() else {
            panic!("new key is leased")
        };
        let pdf = JobResult {
            outcome: Some("downloaded".into()),
            path: Some("W0.pdf".into()),
            sha256: Some("ab".repeat(32)),
            bytes: Some(5000),
            reason: None,
        };
        l.finish(first.id, "A", JobState::Finalized, &pdf).await.unwrap();
        l.clock().advance(Duration::from_secs(1));
        let Claim::Settled(seen) = l.claim(&j, "B", TTL).await.unwrap() else {
            panic!("{}: finalized is settled", t.name)
        };
        // two workers find the file gone: one re-plans, the other's re-plan is a no-op
        assert!(l.replan(&seen, "file missing").await.unwrap(), "{}", t.name);
        assert!(!l.replan(&seen, "file missing").await.unwrap(), "{}", t.name);
        let replanned = l.get(seen.id).await.unwrap().unwrap();
        assert_eq!(replanned.state, JobState::Planned, "{}", t.name);
        assert_eq!(replanned.result.reason.as_deref(), Some("file missing"));
        assert_eq!(replanned.result.path, None, "the old result is cleared");
        let Claim::Leased(again) = l.claim(&j, "B", TTL).await.unwrap() else {
            panic!("{}: a re-planned job is leased", t.name)
        };
        assert_eq!(again.attempts, 2);
        l.clock().advance(Duration::from_secs(1));
        l.finish(again.id, "B", JobState::Finalized, &pdf).await.unwrap();
        // a worker still holding the first sighting cannot undo the new download
        assert!(!l.replan(&seen, "file missing").await.unwrap(), "{}", t.name);
        assert!(matches!(l.claim(&j, "C", TTL).await.unwrap(), Claim::Settled(_)));
        // only FINALIZED jobs are re-planned this way
        l.plan(&job("r", 1)).await.unwrap();
        let planned = l.get_by_key(&job("r", 1).key).await.unwrap().unwrap();
        assert!(!l.replan(&planned, "file missing").await.unwrap(), "{}", t.name);
    }
}

/// A process on this host that has ended (this pid, another start time: a reused pid), one
/// that is alive (this process) and one of unknown liveness (a name that does not say).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_leases_of_an_ended_process_on_this_host_are_taken_back_at_once() {
    let hour = Duration::from_secs(3600);
    for t in backends("dead_owner_leases").await {
        let l = &t.ledger;
        let me = LeaseOwner::current();
        let dead = LeaseOwner {
            start: me.start + 1,
            ..me.clone()
        }
        .to_string();
        let alive = me.to_string();
        for i in 0..3 {
            assert!(matches!(
                l.claim(&job("r", i), &dead, hour).await.unwrap(),
                Claim::Leased(_)
            ));
        }
        assert!(matches!(
            l.claim(&job("r", 3), &alive, hour).await.unwrap(),
            Claim::Leased(_)
        ));
        assert!(matches!(
            l.claim(&job("r", 4), "w-unknown", hour).await.unwrap(),
            Claim::Leased(_)
        ));
        let k = l.start_op(
            l.get_by_key(&job("r", 1).key).await.unwrap().unwrap().id,
            "STREAM",
            "u",
            &dead,
        );
        assert!(matches!(k.await.unwrap(), OpStart::Started(_)));

        // a claim that meets the dead owner's lease takes it (and the owner's other leases back)
        match l.claim(&job("r", 0), "w-other", hour).await.unwrap() {
            Claim::Leased(j) => assert_eq!(j.lease_owner.as_deref(), Some("w-other"), "{}", t.name),
            other => panic!("{}: {other:?}", t.name),
        }
        let j1 = l.get_by_key(&job("r", 1).key).await.unwrap().unwrap();
        assert_eq!(j1.state, JobState::Planned, "{}", t.name);
        assert_eq!(l.ops(j1.id).await.unwrap()[0].status, OpStatus::Abandoned);
        // live and unknown owners keep theirs, an hour before expiry
        assert!(matches!(
            l.claim(&job("r", 3), "w-other", hour).await.unwrap(),
            Claim::Busy(_)
        ));
        assert!(matches!(
            l.claim(&job("r", 4), "w-other", hour).await.unwrap(),
            Claim::Busy(_)
        ));

        // reconciliation takes back a dead owner's leases too, and only those
        assert!(matches!(
            l.claim(&job("r", 1), &dead, hour).await.unwrap(),
            Claim::Leased(_)
        ));
        assert!(matches!(
            l.claim(&job("r", 2), &dead, hour).await.unwrap(),
            Claim::Leased(_)
        ));
        assert_eq!(l.reconcile().await.unwrap().leases_reclaimed, 2, "{}", t.name);
        assert_eq!(l.counts(Some("r")).await.unwrap().leased, 3, "{}", t.name);

        // a worker stopping on a fatal error gives back what it holds
        assert_eq!(l.release_all("w-other").await.unwrap(), 1);
        assert_eq!(l.release_all("w-other").await.unwrap(), 0);
        assert_eq!(l.counts(Some("r")).await.unwrap().leased, 2, "{}", t.name);
    }
}

/// Several openers of one new SQLite ledger at once (as several runner processes starting
/// together do): each gets a working ledger. Switching the fresh file to WAL mode takes an
/// exclusive lock, and SQLite may answer "database is locked" at once instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_openers_of_one_new_sqlite_ledger_all_succeed() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shared.sqlite").display());
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Ledger::open(&url).await })
            })
            .collect();
        for (i, open) in opens.into_iter().enumerate() {
            let ledger = open
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}, opener {i}: {e}"));
            ledger.plan(&job("r", i)).await.unwrap();
        }
    }
}

#[tokio::test]
async fn settled_reads_finalized_and_skipped_jobs_by_key_in_batches() {
    for t in backends("settled_reads_finalized_and_skipped_jobs_by_key_in_batches").await {
        let l = &t.ledger;
        // more than one batch of keys, so the statement is built and bound more than once
        let n = contentdownload::ledger::SETTLED_BATCH + 7;
        let jobs: Vec<NewJob> = (0..n).map(|i| job("r", i)).collect();
        let ids = l.plan_many(&jobs).await.unwrap();
        let done = JobResult {
            outcome: Some("downloaded".into()),
            path: Some("W1.pdf".into()),
            bytes: Some(3000),
            ..JobResult::default()
        };
        for &i in &[1, n - 1] {
            let Claim::Leased(leased) = l.claim(&jobs[i], "w", TTL).await.unwrap() else {
                panic!("{}: claim {i}", t.name)
            };
            l.finish(leased.id, "w", JobState::Finalized, &done).await.unwrap();
        }
        l.skip(ids[3], "not wanted").await.unwrap();
        let Claim::Leased(_) = l.claim(&jobs[5], "w", TTL).await.unwrap() else {
            panic!("{}: claim 5", t.name)
        };
        let mut keys: Vec<IdempotencyKey> = jobs.iter().map(|j| j.key.clone()).collect();
        keys.push(IdempotencyKey::new("never-planned"));
        let settled = l.settled(&keys).await.unwrap();
        let mut found: Vec<&str> = settled.keys().map(|k| k.as_str()).collect();
        found.sort();
        let (one, three, last) = (jobs[1].key.as_str(), jobs[3].key.as_str(), jobs[n - 1].key.as_str());
        let mut want = vec![one, three, last];
        want.sort();
        assert_eq!(
            found, want,
            "{}: planned, leased and unknown keys are not settled",
            t.name
        );
        assert_eq!(settled[&jobs[1].key].result.bytes, Some(3000), "{}", t.name);
        assert_eq!(settled[&jobs[3].key].state, JobState::Skipped, "{}", t.name);
        assert!(l.settled(&[]).await.unwrap().is_empty());

        // a FAILED job counts only for a caller that asks for failures since a time
        let Claim::Leased(failed) = l.claim(&jobs[7], "w", TTL).await.unwrap() else {
            panic!("{}: claim 7", t.name)
        };
        l.finish(failed.id, "w", JobState::Failed, &JobResult::reason("no_candidates"))
            .await
            .unwrap();
        let key = std::slice::from_ref(&jobs[7].key);
        assert!(l.settled(key).await.unwrap().is_empty(), "{}", t.name);
        let recent = l.settled_or_failed_since(key, Some(0)).await.unwrap();
        assert_eq!(recent[&jobs[7].key].state, JobState::Failed, "{}", t.name);
        assert_eq!(recent[&jobs[7].key].result.reason.as_deref(), Some("no_candidates"));
        let later = i64::MAX / 2;
        assert!(
            l.settled_or_failed_since(key, Some(later)).await.unwrap().is_empty(),
            "{}",
            t.name
        );
    }
}

/// Finishes sent together (SQLite writes them in one statement, padded to a power of two
/// with rows that match no job): each is told whether it took, those of another owner or
/// of a job not leased are refused, and no other job changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishes_sent_together_each_get_their_own_answer() {
    for t in backends("finishes_sent_together_each_get_their_own_answer").await {
        let l = &t.ledger;
        let n = t.name;
        let group: Vec<NewJob> = (0..7).map(|i| job("f", i)).collect();
        let leased: Vec<_> = l
            .claim_group(&group, "A", TTL, None)
            .await
            .into_iter()
            .map(|j| j.unwrap_or_else(|| panic!("{n}: new keys are leased")))
            .collect();
        // job 6 stays leased, untouched; 0..=4 are finished by their owner, 5 by another
        let ok = JobResult::reason("ok");
        let finishes = leased[..6].iter().enumerate().map(|(i, j)| {
            let owner = if i == 5 { "B" } else { "A" };
            l.finish(j.id, owner, JobState::Finalized, &ok)
        });
        let results = futures_util::future::join_all(finishes).await;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i < 5, "{n}: finish {i}: {r:?}");
        }
        let jobs = l.jobs(Some("f")).await.unwrap();
        let state = |i: usize| {
            let key = group[i].key.as_str();
            let job = jobs.iter().find(|j| j.key.as_str() == key).unwrap();
            (job.state, job.lease_owner.clone())
        };
        for i in 0..5 {
            assert_eq!(state(i), (JobState::Finalized, None), "{n}: job {i}");
        }
        assert_eq!(state(5), (JobState::Leased, Some("A".into())), "{n}: job 5 stays A's");
        assert_eq!(
            state(6),
            (JobState::Leased, Some("A".into())),
            "{n}: job 6 is untouched"
        );
        assert_eq!(jobs.len(), 7, "{n}");
    }
}

/// A ledger made before migration 3 (the state check as an `IN` list, the full
/// `(state, lease_expires_at)` index) is migrated when opened: the checks become chains of
/// `=` that still refuse an unknown state, the lease index becomes the two partial ones,
/// and its rows go on as before (an expired lease taken back, planned jobs leased and
/// finished). Opening it again changes nothing more.
#[tokio::test]
async fn an_older_ledger_gets_the_cheaper_checks_and_lease_indexes() {
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig::in_dir(dir.path());
    let ledger = Ledger::connect(config.clone()).await.unwrap();
    assert_eq!(ledger.schema_version().await.unwrap(), 3);
    ledger.close().await;
    let url = format!("sqlite://{}", dir.path().join("ledger.sqlite").display());
    let old_check = "CHECK (state IN ('PLANNED', 'LEASED', 'FINALIZED', 'FAILED', 'DEFERRED', 'SKIPPED'))";
    let new_check = "CHECK (state = 'LEASED' OR state = 'FINALIZED' OR state = 'FAILED' OR state = 'PLANNED' \
                     OR state = 'DEFERRED' OR state = 'SKIPPED')";
    let schema = |url: String| async move {
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let rows =
            sqlx::query("SELECT name, sql FROM sqlite_master WHERE name LIKE 'jobs%' OR name = 'ops' ORDER BY name")
                .fetch_all(&mut db)
                .await
                .unwrap();
        db.close().await.unwrap();
        rows.iter()
            .map(|r| {
                format!(
                    "{}: {}",
                    r.get::<String, _>(0),
                    r.get::<Option<String>, _>(1).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // back to schema 2, as version 2 of the runner left it, with jobs in several states
    {
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let back = format!(
            "PRAGMA writable_schema = ON; \
             UPDATE sqlite_master SET sql = replace(replace(sql, \"{new_check}\", \"{old_check}\"), \
             \"CHECK (status = 'STARTED' OR status = 'FINISHED' OR status = 'ABANDONED')\", \
             \"CHECK (status IN ('STARTED', 'FINISHED', 'ABANDONED'))\") WHERE name IN ('jobs', 'ops'); \
             PRAGMA writable_schema = RESET; \
             DROP INDEX jobs_leased; DROP INDEX jobs_planned; DROP INDEX jobs_deferred; \
             CREATE INDEX jobs_state_lease ON jobs (state, lease_expires_at); \
             DELETE FROM _sqlx_migrations WHERE version = 3; \
             INSERT INTO jobs (run_id, work_id, idempotency_key, canonical_url, state, lease_owner, lease_expires_at, \
             attempts, created_at, updated_at) VALUES \
             ('old', 'W1', 'old-1', 'https://example.org/1.pdf', 'PLANNED', NULL, NULL, 0, 1, 1), \
             ('old', 'W2', 'old-2', 'https://example.org/2.pdf', 'LEASED', 'gone', 2, 1, 1, 1), \
             ('old', 'W3', 'old-3', 'https://example.org/3.pdf', 'FINALIZED', NULL, NULL, 1, 1, 1)"
        );
        sqlx::raw_sql(&back).execute(&mut db).await.unwrap();
        db.close().await.unwrap();
    }
    let old = schema(url.clone()).await;
    assert!(
        old.contains(old_check) && old.contains("jobs_state_lease") && !old.contains("jobs_leased"),
        "{old}"
    );

    let ledger = Ledger::connect(config.clone()).await.unwrap();
    assert_eq!(ledger.schema_version().await.unwrap(), 3);
    let new = schema(url.clone()).await;
    assert!(new.contains(new_check) && !new.contains("IN ("), "{new}");
    assert!(
        new.contains("jobs_leased: CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'LEASED'")
            && new.contains("jobs_planned: CREATE INDEX jobs_planned ON jobs (id) WHERE state = 'PLANNED'")
            && new.contains("jobs_deferred: CREATE INDEX jobs_deferred ON jobs (reason) WHERE state = 'DEFERRED'")
            && !new.contains("jobs_state_lease"),
        "{new}"
    );
    // the expired lease was taken back at opening; both planned jobs lease and finish
    let leased = ledger.lease(Some("old"), "w", 10, TTL).await.unwrap();
    assert_eq!(leased.len(), 2, "{leased:?}");
    for j in &leased {
        ledger
            .finish(j.id, "w", JobState::Finalized, &JobResult::outcome("pdf"))
            .await
            .unwrap();
    }
    assert_eq!(ledger.counts(Some("old")).await.unwrap().finalized, 3);
    ledger.close().await;

    // the rewritten check still refuses a state the ledger does not know
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let bogus = sqlx::query("UPDATE jobs SET state = 'BOGUS' WHERE idempotency_key = 'old-1'")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(bogus.to_string().contains("CHECK"), "{bogus}");
    // `status`'s count of deferred works by reason (`Ledger::reasons`, whose statement names
    // the state) reads the partial index of DEFERRED jobs, not the whole table
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT reason, COUNT(*) FROM jobs WHERE state = 'DEFERRED' GROUP BY reason \
         ORDER BY COUNT(*) DESC, COALESCE(reason, '')",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
    .iter()
    // (a plan row's text is its fourth column, `detail`)
    .map(|r| sqlx::Row::get::<String, _>(r, 3))
    .collect();
    assert!(plan.iter().any(|l| l.contains("jobs_deferred")), "{plan:?}");
    let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(ok, "ok");
    db.close().await.unwrap();

    // opened again: nothing more to do
    let ledger = Ledger::connect(config).await.unwrap();
    assert_eq!(ledger.schema_version().await.unwrap(), 3);
    ledger.close().await;
    assert_eq!(schema(url).await, new);
}

/// Answers read many works at a time come back whole whatever the group's size (each
/// statement is padded to a power of two; the padding matches no work).
#[tokio::test]
async fn resolver_answers_read_in_groups_of_any_size() {
    use contentdownload::ledger::ResolverAnswer;
    for t in backends("resolver_answers_read_in_groups").await {
        let l = &t.ledger;
        let n = t.name;
        for w in ["W1", "W2", "W3"] {
            let answer = ResolverAnswer {
                resolver: "unpaywall".into(),
                answer: format!("[\"https://example.org/{w}.pdf\"]"),
                candidates: 1,
                found_pdf: false,
                answered_at: None,
            };
            l.remember_answers(w, &[answer]).await.unwrap();
        }
        let day = Duration::from_secs(86_400);
        for ids in [&["W1"][..], &["W2", "W9"], &["W9", "W1", "W2", "W3", "W8"]] {
            let got = l.resolver_answers_of(ids, day).await.unwrap();
            assert_eq!(got.len(), ids.len(), "{n}: {got:?}");
            for id in ids {
                let want = usize::from(*id != "W8" && *id != "W9");
                assert_eq!(got[*id].len(), want, "{n}: {id}");
                if want == 1 {
                    assert!(got[*id][0].answer.contains(id), "{n}: {:?}", got[*id]);
                }
            }
        }
    }
}

/// A job that failed before comes back from a group claim with its last result as stored,
/// field for field (the batched claim returns the result packed in one column).
#[tokio::test]
async fn a_group_claim_returns_a_failed_jobs_last_result() {
    for t in backends("a_group_claim_returns_a_failed_jobs_last_result").await {
        let l = &t.ledger;
        let n = t.name;
        let Claim::Leased(j) = l.claim(&job("f", 0), "A", TTL).await.unwrap() else {
            panic!("{n}: new key")
        };
        let result = JobResult {
            outcome: Some("http_503".into()),
            path: Some("pdfs/a \"b\" \u{e9}.pdf".into()),
            sha256: Some("ab".repeat(32)),
            bytes: Some(i64::MAX),
            reason: Some("line\nbreak, \\ and \u{1F4C4}".into()),
        };
        l.finish(j.id, "A", JobState::Failed, &result).await.unwrap();
        let got = l.claim_group(&[job("f", 0), job("f", 1)], "B", TTL, None).await;
        let new = got[1].as_ref().unwrap_or_else(|| panic!("{n}: a new key is leased"));
        assert_eq!(new.result, JobResult::default(), "{n}");
        assert_eq!(l.get(new.id).await.unwrap().as_ref(), Some(new), "{n}");
        // PostgreSQL leaves existing keys to the single claim; SQLite batches them
        assert!(got[0].is_some() || n != "sqlite", "{n}: {got:?}");
        let again = match &got[0] {
            Some(again) => again.clone(),
            None => match l.claim(&job("f", 0), "B", TTL).await.unwrap() {
                Claim::Leased(again) => again,
                other => panic!("{n}: {other:?}"),
            },
        };
        assert_eq!((again.id, again.attempts, &again.result), (j.id, 2, &result), "{n}");
        assert_eq!(l.get(j.id).await.unwrap(), Some(again), "{n}");
    }
}
