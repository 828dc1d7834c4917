//! Proof that the copy is complete: the mailbox trees of OLD and NEW, compared.

/// At most this many differences are listed in an error.
const SHOWN: usize = 10;

/// One entry of a manifest line: path, type, size, mtime (whole seconds), owner.
fn normalize(line: &str) -> Option<String> {
    let mut f = line.split('\t');
    let (path, kind, size, mtime, owner) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    // Filesystems keep different sub-second precision; whole seconds are what matter
    // (a `password` file's mtime is its user's last login).
    let secs = mtime.split('.').next().unwrap_or(mtime);
    Some(format!("{path}\t{kind}\t{size}\t{secs}\t{owner}"))
}

/// An entry's path: what the merge orders by (borrowed: it runs once per line).
fn key(entry: &str) -> &str {
    entry.split('\t').next().unwrap_or("")
}

/// The differences found so far: the first [`SHOWN`], and how many in all.
#[derive(Debug, Default)]
pub struct Differences {
    shown: Vec<String>,
    total: usize,
    /// Entries compared (for the log).
    pub entries: usize,
}

/// Which side the merge reads next.
enum Advance {
    Old,
    New,
    Both,
    Done,
}

impl Differences {
    fn note(&mut self, s: String) {
        self.total += 1;
        if self.shown.len() < SHOWN {
            self.shown.push(s);
        }
    }

    /// One step of the merge of two sorted manifests: compares their current
    /// (normalized) entries and says which to move past.
    fn compare(&mut self, old: Option<&str>, new: Option<&str>) -> Advance {
        let (x, y) = match (old, new) {
            (None, None) => return Advance::Done,
            (Some(x), None) => {
                self.note(format!("missing on new: {}", key(x)));
                return Advance::Old;
            }
            (None, Some(y)) => {
                self.note(format!("only on new: {}", key(y)));
                return Advance::New;
            }
            (Some(x), Some(y)) => (x, y),
        };
        let (kx, ky) = (key(x), key(y));
        if kx < ky {
            self.note(format!("missing on new: {kx}"));
            Advance::Old
        } else if ky < kx {
            self.note(format!("only on new: {ky}"));
            Advance::New
        } else {
            if x != y {
                self.note(format!("differs: {kx} (old {x:?}, new {y:?})"));
            }
            Advance::Both
        }
    }

    /// Human-readable differences, empty when the manifests were identical.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.total > self.shown.len() {
            let more = self.total - self.shown.len();
            self.shown.push(format!("... and {more} more differences"));
        }
        self.shown
    }
}

/// Compares two sorted manifests held in memory (tests, small trees).
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let mut a = old.lines().filter_map(normalize);
    let mut b = new.lines().filter_map(normalize);
    let (mut x, mut y) = (a.next(), b.next());
    let mut d = Differences::default();
    loop {
        match d.compare(x.as_deref(), y.as_deref()) {
            Advance::Done => return d.into_lines(),
            Advance::Old => x = a.next(),
            Advance::New => y = b.next(),
            Advance::Both => (x, y) = (a.next(), b.next()),
        }
    }
}

/// Compares two sorted manifests as their lines arrive: memory stays bounded by
/// the channels, whatever the number of files. A side that ends early (its command
/// failed) reads as "nothing more"; the caller checks the commands' exit codes.
pub async fn diff_streams(
    mut old: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut new: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Differences {
    async fn next(rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>) -> Option<String> {
        while let Some(line) = rx.recv().await {
            if let Some(entry) = normalize(&String::from_utf8_lossy(&line)) {
                return Some(entry);
            }
        }
        None
    }
    let mut d = Differences::default();
    let (mut x, mut y) = tokio::join!(next(&mut old), next(&mut new));
    loop {
        match d.compare(x.as_deref(), y.as_deref()) {
            Advance::Done => return d,
            Advance::Old => x = next(&mut old).await,
            Advance::New => y = next(&mut new).await,
            Advance::Both => (x, y) = tokio::join!(next(&mut old), next(&mut new)),
        }
        d.entries += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn identical_manifests_have_no_differences() {
        let m = "a\tf\t3\t100.5\tvmail:vmail\nb\td\t0\t0\tvmail:vmail\n";
        assert!(diff(m, &m.replace("100.5", "100.9")).is_empty());
    }

    /// The streaming merge finds what the in-memory one finds.
    #[tokio::test]
    async fn streams_compare_like_strings() {
        let old = "a\tf\t3\t100\tvmail:vmail\nb\tf\t1\t100\tvmail:vmail\nd\tf\t1\t1\tv:v\n";
        let new = "a\tf\t4\t100\tvmail:vmail\nc\tf\t1\t100\tvmail:vmail\nd\tf\t1\t1.7\tv:v\n";
        let feed = |text: &'static str| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                for l in text.lines() {
                    let _ = tx.send(l.as_bytes().to_vec()).await;
                }
            });
            rx
        };
        let streamed = super::diff_streams(feed(old), feed(new)).await;
        assert_eq!(streamed.entries, 4);
        assert_eq!(streamed.into_lines(), diff(old, new));
    }

    #[test]
    fn reports_missing_extra_and_changed_entries() {
        let old = "a\tf\t3\t100\tvmail:vmail\nb\tf\t1\t100\tvmail:vmail\n";
        let new = "a\tf\t4\t100\tvmail:vmail\nc\tf\t1\t100\tvmail:vmail\n";
        let d = diff(old, new);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("differs: a"));
        assert_eq!(d[1], "missing on new: b");
        assert_eq!(d[2], "only on new: c");
    }
}
