//! `--limit`: which relays a command works on, like Ansible's.
//!
//! A limit is a comma-separated list of patterns: a mail_domain, a glob over
//! mail_domains (`*.example.org`), a group name, `@FILE` (one pattern a line, as
//! `failed.txt` is written), and `!PATTERN` to exclude. Every pattern must match
//! something: a typo must not silently shrink a migration.
//!
//! A limit that holds no pattern at all (`''`, `','`, an empty `failed.txt` after a
//! night without failures, `@/dev/null`) selects *no* relay, never the whole fleet:
//! the runbook's retry command must be harmless after a clean night. No `--limit`
//! at all is the whole fleet.

use std::path::PathBuf;

use thiserror::Error;

use super::model::{Inventory, Relay};

#[derive(Debug, Error)]
pub enum SelectError {
    #[error("--limit: cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--limit: {pattern:?} is not a valid glob pattern: {reason}")]
    BadGlob { pattern: String, reason: String },
    #[error("--limit: {pattern:?} matches no relay and no group of the inventory")]
    NoMatch { pattern: String },
    /// A line of a `@FILE` that is not a relay name, glob or group: its text is not
    /// echoed (`--limit @/etc/shadow` must not print a password hash).
    #[error("--limit: line {line} of {} is not a relay name, glob or group name", path.display())]
    NotAPattern { path: PathBuf, line: usize },
    #[error("--limit: line {line} of {} ({pattern:?}) matches no relay and no group of the inventory", path.display())]
    NoMatchInFile {
        path: PathBuf,
        line: usize,
        pattern: String,
    },
    #[error("--limit {limit:?} selects no relay")]
    Empty { limit: String },
}

/// The relays selected by `limit` (all when `None`, none when it holds no
/// pattern), in inventory order.
pub fn select<'a>(inv: &'a Inventory, limit: Option<&str>) -> Result<Vec<&'a Relay>, SelectError> {
    let Some(limit) = limit else {
        return Ok(inv.relays.iter().collect());
    };
    let patterns = expand(limit)?;
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let mut include = vec![false; inv.relays.len()];
    let mut exclude = vec![false; inv.relays.len()];
    let only_exclusions = patterns.iter().all(|p| p.text.starts_with('!'));
    for pattern in &patterns {
        let (negate, p) = match pattern.text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.text.as_str()),
        };
        let matcher = Matcher::new(p)?;
        let mut any = false;
        for (i, r) in inv.relays.iter().enumerate() {
            if matcher.matches(r) {
                any = true;
                if negate {
                    exclude[i] = true;
                } else {
                    include[i] = true;
                }
            }
        }
        if !any {
            return Err(match &pattern.from {
                Some((path, line)) => SelectError::NoMatchInFile {
                    path: path.clone(),
                    line: *line,
                    pattern: pattern.text.clone(),
                },
                None => SelectError::NoMatch {
                    pattern: pattern.text.clone(),
                },
            });
        }
    }
    let chosen: Vec<&Relay> = inv
        .relays
        .iter()
        .enumerate()
        .filter(|(i, _)| (include[*i] || only_exclusions) && !exclude[*i])
        .map(|(_, r)| r)
        .collect();
    if chosen.is_empty() {
        return Err(SelectError::Empty {
            limit: limit.to_string(),
        });
    }
    Ok(chosen)
}

/// One pattern of a limit, and the `@FILE` line it came from.
struct Pattern {
    text: String,
    from: Option<(PathBuf, usize)>,
}

/// Splits the limit into patterns, reading `@FILE`s (blank lines and `#` comments
/// skipped). A file's line must look like a pattern before it is used or shown.
fn expand(limit: &str) -> Result<Vec<Pattern>, SelectError> {
    let mut out = Vec::new();
    for item in limit.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(file) = item.strip_prefix('@') else {
            out.push(Pattern {
                text: item.to_string(),
                from: None,
            });
            continue;
        };
        let path = PathBuf::from(file);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(source) => return Err(SelectError::ReadFile { path, source }),
        };
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let text = std::str::from_utf8(line)
                .ok()
                .filter(|l| looks_like_pattern(l))
                .ok_or_else(|| SelectError::NotAPattern {
                    path: path.clone(),
                    line: i + 1,
                })?;
            out.push(Pattern {
                text: text.to_string(),
                from: Some((path.clone(), i + 1)),
            });
        }
    }
    Ok(out)
}

/// Characters of mail domains, group names and globs over them (and `!`).
fn looks_like_pattern(s: &str) -> bool {
    s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.*?[]!".contains(&b))
}

enum Matcher {
    Glob(glob::Pattern),
    Exact(String),
}

impl Matcher {
    fn new(p: &str) -> Result<Self, SelectError> {
        if p.contains(['*', '?', '[']) {
            glob::Pattern::new(p)
                .map(Matcher::Glob)
                .map_err(|e| SelectError::BadGlob {
                    pattern: p.to_string(),
                    reason: e.msg.to_string(),
                })
        } else {
            Ok(Matcher::Exact(p.trim_end_matches('.').to_ascii_lowercase()))
        }
    }

    fn matches(&self, r: &Relay) -> bool {
        match self {
            Matcher::Glob(g) => {
                g.matches(&r.name) || r.group.as_deref().is_some_and(|gr| g.matches(gr))
            }
            Matcher::Exact(s) => &r.name == s || r.group.as_deref() == Some(s.as_str()),
        }
    }
}
