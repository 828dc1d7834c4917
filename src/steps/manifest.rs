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

/// Compares two sorted manifests in one pass; returns human-readable differences
/// (at most [`SHOWN`], plus a count of the rest), empty when identical.
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let mut a = old.lines().filter_map(normalize).peekable();
    let mut b = new.lines().filter_map(normalize).peekable();
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut note = |s: String, out: &mut Vec<String>| {
        total += 1;
        if out.len() < SHOWN {
            out.push(s);
        }
    };
    loop {
        let key = |l: &String| l.split('\t').next().unwrap_or("").to_string();
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(x), None) => {
                note(format!("missing on new: {}", key(x)), &mut out);
                a.next();
            }
            (None, Some(y)) => {
                note(format!("only on new: {}", key(y)), &mut out);
                b.next();
            }
            (Some(x), Some(y)) => {
                let (kx, ky) = (key(x), key(y));
                if kx < ky {
                    note(format!("missing on new: {kx}"), &mut out);
                    a.next();
                } else if ky < kx {
                    note(format!("only on new: {ky}"), &mut out);
                    b.next();
                } else {
                    if x != y {
                        note(format!("differs: {kx} (old {x:?}, new {y:?})"), &mut out);
                    }
                    a.next();
                    b.next();
                }
            }
        }
    }
    if total > out.len() {
        out.push(format!("... and {} more differences", total - out.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn identical_manifests_have_no_differences() {
        let m = "a\tf\t3\t100.5\tvmail:vmail\nb\td\t0\t0\tvmail:vmail\n";
        assert!(diff(m, &m.replace("100.5", "100.9")).is_empty());
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
