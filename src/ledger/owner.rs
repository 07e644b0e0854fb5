//! Lease owners that say who they are: host, process id and process start time, so that a
//! lease held by a process that died on this host is taken back at once instead of after
//! its TTL.
//!
//! # Why an encoded owner string and not new columns?
//!
//! The owner is already a text column on both backends, written by every lease statement
//! and compared by every conditional update. Encoding `host:pid:start:pidns:boot` in it needs no
//! migration on SQLite nor PostgreSQL, changes no statement, and stays readable in `status`
//! and error messages (`leased by web1:4242:1234567:4026531836:1a2b3c4d`). Owners that do not parse
//! (an older version's `host-pid`, a name a library user chose) are simply of unknown
//! liveness: their leases run out with their TTL, as before.
//!
//! # Example
//!
//! ```
//! use contentdownload::ledger::{LeaseOwner, Liveness};
//!
//! let me = LeaseOwner::current();
//! let parsed: LeaseOwner = me.to_string().parse().unwrap();
//! assert_eq!(&parsed, me);
//! # #[cfg(target_os = "linux")]
//! assert_eq!(parsed.liveness(), Liveness::Alive);
//! // the same pid with another start time is a process that has ended (its pid reused)
//! let ended = LeaseOwner { start: me.start + 1, ..me.clone() };
//! # #[cfg(target_os = "linux")]
//! assert_eq!(ended.liveness(), Liveness::Dead);
//! // an owner of another host: nobody here can tell
//! let elsewhere = LeaseOwner { host: "elsewhere".into(), ..me.clone() };
//! assert_eq!(elsewhere.liveness(), Liveness::Unknown);
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use super::connect::WritePool;
use super::error::LedgerError;
use super::{with_pool, with_write_pool, Ledger};

/// Who holds a lease: the host, the process and when it started.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseOwner {
    /// The host name (`:` replaced by `_`).
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The process's start time (Linux: clock ticks since boot, `/proc/<pid>/stat` field
    /// 22); 0 where it cannot be read.
    pub start: u64,
    /// The process-id namespace (Linux: the inode of `/proc/self/ns/pid`; 0 elsewhere): two
    /// containers with the same host name do not see each other's processes.
    pub pid_ns: u64,
    /// The kernel's boot (Linux: the first 8 hex digits of
    /// `/proc/sys/kernel/random/boot_id`; empty elsewhere): two machines that share a host
    /// name (cloned machines, `localhost`) are not the same kernel.
    pub boot: String,
}

/// Whether the process that holds a lease is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Running (on this host, same pid and start time).
    Alive,
    /// Gone: on this host, no process with that pid, or one that started at another time.
    Dead,
    /// Another host, another pid namespace, an owner that does not say, or a platform
    /// without `/proc`: wait for the lease's TTL.
    Unknown,
}

impl LeaseOwner {
    /// This process.
    pub fn current() -> &'static LeaseOwner {
        static CURRENT: OnceLock<LeaseOwner> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().replace(':', "_"))
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "host".to_owned());
            let pid = std::process::id();
            LeaseOwner {
                host,
                pid,
                start: start_time(pid).unwrap_or(0),
                pid_ns: pid_namespace().unwrap_or(0),
                boot: boot_id().unwrap_or_default(),
            }
        })
    }

    /// Whether this owner is still running, as far as this process can tell.
    pub fn liveness(&self) -> Liveness {
        let me = LeaseOwner::current();
        let same_kernel = self.host == me.host && self.pid_ns == me.pid_ns && self.boot == me.boot;
        if !same_kernel || me.boot.is_empty() || me.start == 0 || self.start == 0 {
            return Liveness::Unknown;
        }
        match start_time(self.pid) {
            Some(start) if start == self.start => Liveness::Alive,
            // the pid was reused by a process that started later
            Some(_) => Liveness::Dead,
            None => Liveness::Dead,
        }
    }
}

impl fmt::Display for LeaseOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}",
            self.host, self.pid, self.start, self.pid_ns, self.boot
        )
    }
}

impl FromStr for LeaseOwner {
    type Err = ();

    /// `host:pid:start:pidns:boot`; anything else is `Err(())` (an owner of unknown
    /// liveness).
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.rsplitn(5, ':');
        let boot = parts.next().ok_or(())?.to_owned();
        let pid_ns = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let start = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let pid = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let host = parts.next().filter(|h| !h.is_empty()).ok_or(())?;
        Ok(LeaseOwner {
            host: host.to_owned(),
            pid,
            start,
            pid_ns,
            boot,
        })
    }
}

/// The liveness of the owner named `owner` (a lease's `lease_owner`).
pub(crate) fn liveness_of(owner: Option<&str>) -> Liveness {
    owner
        .and_then(|o| o.parse::<LeaseOwner>().ok())
        .map_or(Liveness::Unknown, |o| o.liveness())
}

/// Linux: field 22 of `/proc/<pid>/stat` (after the command name, which may hold spaces and
/// parentheses, hence the split at the last `)`); `None` if there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (state): field 22 is the 20th from here
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let short: String = id.chars().filter(char::is_ascii_hexdigit).take(8).collect();
    (short.len() == 8).then_some(short)
}

fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_string_lossy();
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

impl Ledger {
    /// Takes back at once the leases of owners on this host whose process has ended (back
    /// to PLANNED, attempt kept counted; their STARTED ops ABANDONED); returns how many
    /// jobs. Leases of live owners, of other hosts and of owners that do not say who they
    /// are ([`LeaseOwner`]) are left to their TTL.
    pub async fn reclaim_dead_owners(&self) -> Result<u64, LedgerError> {
        let owners: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT DISTINCT lease_owner FROM jobs WHERE state = 'LEASED' AND lease_owner IS NOT NULL")
                .fetch_all(pool)
                .await
                .map_err(LedgerError::db("list lease owners"))?
        });
        let mut reclaimed = 0;
        for owner in owners {
            if liveness_of(Some(&owner)) == Liveness::Dead {
                let n = self.take_back_leases(&owner, true).await?;
                if n > 0 {
                    tracing::info!(owner = %owner, jobs = n, "took back the leases of a process on this host that has ended");
                }
                reclaimed += n;
            }
        }
        Ok(reclaimed)
    }

    /// When `holder` (a lease's owner) is a process on this host that has ended, takes back
    /// all its leases and says so; `false` for a live or unknown holder.
    pub(crate) async fn took_back_from_the_dead(&self, holder: Option<&str>) -> Result<bool, LedgerError> {
        match holder {
            Some(holder) if liveness_of(Some(holder)) == Liveness::Dead => {
                let n = self.take_back_leases(holder, true).await?;
                tracing::info!(owner = %holder, jobs = n, "took back the leases of a process on this host that has ended");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Gives back every lease `owner` holds (LEASED → PLANNED, attempt kept counted), for a
    /// worker that stops on a fatal error; returns how many.
    pub async fn release_all(&self, owner: &str) -> Result<u64, LedgerError> {
        self.take_back_leases(owner, false).await
    }

    /// LEASED by `owner` → PLANNED; with `abandon_ops`, its jobs' STARTED ops → ABANDONED.
    pub(crate) async fn take_back_leases(&self, owner: &str, abandon_ops: bool) -> Result<u64, LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if abandon_ops {
                sqlx::query(
                    "UPDATE ops SET status = 'ABANDONED', finished_at = $1 WHERE status = 'STARTED' \
                     AND job_id IN (SELECT id FROM jobs WHERE state = 'LEASED' AND lease_owner = $2)",
                )
                .bind(now)
                .bind(owner)
                .execute(&mut *tx)
                .await
                .map_err(LedgerError::db("abandon a dead owner's ops"))?;
            }
            let jobs = sqlx::query(
                "UPDATE jobs SET state = 'PLANNED', lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
                 WHERE state = 'LEASED' AND lease_owner = $2",
            )
            .bind(now)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(LedgerError::db("take back leases"))?
            .rows_affected();
            tx.commit().await.map_err(LedgerError::db("commit taken-back leases"))?;
            Ok(jobs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_and_odd_ones_are_unknown() {
        let o = LeaseOwner {
            host: "web-1.example".into(),
            pid: 42,
            start: 99,
            pid_ns: 7,
            boot: "1a2b3c4d".into(),
        };
        assert_eq!(o.to_string(), "web-1.example:42:99:7:1a2b3c4d");
        assert_eq!("web-1.example:42:99:7:1a2b3c4d".parse::<LeaseOwner>(), Ok(o));
        for odd in ["", "web1-4242", "w1", ":1:2:3:b", "h:x:2:3:b", "h:1:2:b", "h:1:2:-3:b"] {
            assert!(odd.parse::<LeaseOwner>().is_err(), "{odd}");
            assert_eq!(liveness_of(Some(odd)), Liveness::Unknown, "{odd}");
        }
        assert_eq!(liveness_of(None), Liveness::Unknown);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_that_ended_is_dead_and_this_one_alive() {
        let me = LeaseOwner::current();
        assert!(me.start > 0 && me.pid_ns > 0 && me.boot.len() == 8, "{me}");
        assert_eq!(me.liveness(), Liveness::Alive);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let ended = LeaseOwner { pid, ..me.clone() };
        assert_eq!(ended.liveness(), Liveness::Dead);
        let other_ns = LeaseOwner {
            pid,
            pid_ns: me.pid_ns + 1,
            ..me.clone()
        };
        assert_eq!(other_ns.liveness(), Liveness::Unknown);
        // a machine with the same name is another kernel
        let twin = LeaseOwner {
            pid,
            boot: "00000000".into(),
            ..me.clone()
        };
        assert_eq!(twin.liveness(), Liveness::Unknown);
    }
}
