//! File names from stable ids: never from titles, never outside the output folder.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::works::Work;

/// The file stem for a work: the OpenAlex short id (`W2741809807`) when it has one, else its
/// DOI made file-safe with a short hash of the DOI appended (so that `10.1/a_b` and
/// `10.1/a/b` do not collide), else a hash of its id.
///
/// The result has only ASCII letters, digits, `.`, `_` and `-`, does not start with `.`,
/// and is at most 120 bytes: it cannot name a folder or leave the output folder.
///
/// ```
/// use contentdownload::download::file_stem;
/// use contentdownload::works::Work;
///
/// let w = Work::from_doi("10.1000/../../etc/passwd").unwrap();
/// let stem = file_stem(&w);
/// assert!(stem.starts_with("10.1000_.._.._etc_passwd-"));
/// assert!(!stem.contains('/'));
/// ```
pub fn file_stem(work: &Work) -> String {
    let id = work.id.as_str();
    if id.len() > 1 && id.starts_with('W') && id[1..].bytes().all(|b| b.is_ascii_digit()) && id.len() <= 32 {
        return id.to_owned();
    }
    let basis = work.doi.as_deref().unwrap_or(id);
    let digest = Sha256::digest(basis.as_bytes());
    let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let mut safe: String = basis
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while safe.starts_with('.') {
        safe.remove(0);
    }
    safe.truncate(100);
    if safe.is_empty() {
        short
    } else {
        format!("{safe}-{short}")
    }
}

/// `<dir>/<stem>.<ext>`, or `None` when the stem is not a single plain file name.
pub fn safe_join(dir: &Path, stem: &str, ext: &str) -> Option<PathBuf> {
    let plain = !stem.is_empty()
        && !stem.starts_with('.')
        && stem.len() <= 200
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    plain.then(|| dir.join(format!("{stem}.{ext}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        let mut w = Work::from_doi("10.1000/ABC").unwrap();
        let doi_stem = file_stem(&w);
        assert!(doi_stem.starts_with("10.1000_abc-"), "{doi_stem}");
        w.id = "W123".into();
        assert_eq!(file_stem(&w), "W123");
        let a = file_stem(&Work::from_doi("10.1/a_b").unwrap());
        let b = file_stem(&Work::from_doi("10.1/a/b").unwrap());
        assert_ne!(a, b);
        let long = file_stem(&Work::from_doi(&format!("10.1/{}", "x".repeat(500))).unwrap());
        assert!(long.len() <= 120);
    }

    #[test]
    fn nothing_escapes() {
        let dir = Path::new("/out");
        assert_eq!(safe_join(dir, "W1", "pdf"), Some(PathBuf::from("/out/W1.pdf")));
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "/abs", "a\0b"] {
            assert_eq!(safe_join(dir, bad, "pdf"), None, "{bad:?}");
        }
        for doi in ["10.1/../../x", "10.1/..", "10.1/\\..\\x"] {
            let stem = file_stem(&Work::from_doi(doi).unwrap());
            let path = safe_join(dir, &stem, "pdf").unwrap();
            assert_eq!(path.parent(), Some(dir), "{doi} -> {}", path.display());
        }
    }
}
