//! [`Durability`]: when a downloaded file is forced to disk, and [`sync_batch`], which does
//! it for a group of files at once.

use std::path::{Path, PathBuf};

/// When a download is forced to disk (the runner's `--durability`).
///
/// Whatever the choice, a file is only renamed into place after every byte was written and
/// checked, so a crash never leaves a half file under a final name; the choice is about a
/// *power loss* (or a kernel crash), after which data still in the page cache is gone.
///
/// | | a file's data and its folder entry reach the disk | cost |
/// | --- | --- | --- |
/// | [`File`](Durability::File) | before the download returns (`fsync` of the file, then of the folder after the rename) | a disk flush per file |
/// | [`Batch`](Durability::Batch) | later, for a group of files at once ([`sync_batch`]): the runner does it before the group's ledger rows say FINALIZED | one flush per group |
/// | [`None`](Durability::None) | whenever the kernel writes back | nothing |
///
/// ```
/// use contentdownload::download::Durability;
///
/// assert_eq!("batch".parse::<Durability>(), Ok(Durability::Batch));
/// assert_eq!(Durability::File.as_str(), "file");
/// assert!("always".parse::<Durability>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `fsync` each file before its download returns, and its folder after the rename
    /// (the library's default: a caller on its own has no group to sync).
    #[default]
    File,
    /// Leave the syncing to the caller, who syncs a group of files with [`sync_batch`]
    /// before it records them as done (the runner's default).
    Batch,
    /// Never sync: for throwaway corpora, where a power loss may cost files the ledger
    /// says are downloaded (a rerun that checks sizes finds most of them).
    None,
}

impl Durability {
    /// `"file"`, `"batch"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::File => "file",
            Durability::Batch => "batch",
            Durability::None => "none",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "file" => Ok(Durability::File),
            "batch" => Ok(Durability::Batch),
            "none" => Ok(Durability::None),
            other => Err(format!("durability is file, batch or none, not {other:?}")),
        }
    }
}

/// Forces `files` (already renamed into place) and their folders to disk, blocking: the
/// group sync of [`Durability::Batch`]. Run it on a blocking thread.
///
/// On Linux, a group of more than 16 files gets one `syncfs` per file system
/// the files are on (found through their folders): one journal commit for the whole group,
/// where an `fsync` per file costs one each (about 0.2 ms per 100 KB file on the ext4 disk
/// of our bench machine, against a few µs per file for one `syncfs` over 200 files).
/// `syncfs` also writes back, and waits for, every other program's dirty data on that file
/// system; that costs time, never correctness. A smaller group, and any group elsewhere,
/// gets an `fsync` of each file then of each distinct folder: for one large file that is
/// the wait for its own data only (one 1 GiB download on a machine where other programs
/// were writing, two bulk_bench rounds: 3.41 and 3.21 s with `batch`'s `syncfs`, 1.76 and
/// 1.85 s with `file`'s `fsync`; issue 14). A file of the group that is gone is an error.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let file = dir.path().join("a.pdf");
/// std::fs::write(&file, b"%PDF-1.7 ...")?;
/// contentdownload::download::sync_batch(&[file])?;
/// # Ok(()) }
/// ```
pub fn sync_batch(files: &[PathBuf]) -> std::io::Result<()> {
    let mut folders: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    folders.sort_unstable();
    folders.dedup();
    #[cfg(target_os = "linux")]
    if files.len() > SYNCFS_FROM {
        use std::os::unix::fs::MetadataExt;
        let mut devices = Vec::new();
        for folder in folders {
            let dir = std::fs::File::open(folder)?;
            let dev = dir.metadata()?.dev();
            if !devices.contains(&dev) {
                devices.push(dev);
                rustix::fs::syncfs(&dir)?;
            }
        }
        return Ok(());
    }
    for file in files {
        std::fs::File::open(file)?.sync_all()?;
    }
    // a folder cannot be opened to sync outside Unix
    #[cfg(unix)]
    for folder in folders {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(())
}

/// The largest group [`sync_batch`] syncs file by file (on Linux; a larger one gets a
/// `syncfs`).
#[cfg(target_os = "linux")]
const SYNCFS_FROM: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.pdf"));
                std::fs::write(&path, b"%PDF-1.7\n").unwrap();
                path
            })
            .collect()
    }

    /// A small group is synced file by file, a large one by file system; both sync every
    /// folder the files are in.
    #[test]
    fn small_and_large_groups_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let mut group = files(&a, 2);
        sync_batch(&group).unwrap();
        group.extend(files(&b, 40));
        sync_batch(&group).unwrap();
        sync_batch(&[]).unwrap();
    }

    /// A file of a small group that is gone is an error, not a silent success: the group's
    /// rows would say FINALIZED for a file that is not on disk.
    #[test]
    fn a_missing_file_of_a_small_group_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut group = files(dir.path(), 1);
        group.push(dir.path().join("gone.pdf"));
        let err = sync_batch(&group).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
