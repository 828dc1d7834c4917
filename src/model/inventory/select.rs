//! `--limit`: which relays a command works on, like Ansible's.
//!
//! A limit is a comma-separated list of patterns: a mail_domain, a glob over
//! mail_domains (`*.example.org`), a group name, `@FILE` (one pattern a line, as
//! `failed.txt` is written), and `!PATTERN` to exclude. Every pattern must match
//! something: a typo must not silently shrink a migration.

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
    #[error("--limit {limit:?} selects no relay")]
    Empty { limit: String },
}

/// The relays selected by `limit` (all when `None`), in inventory order.
pub fn select<'a>(inv: &'a Inventory, limit: Option<&str>) -> Result<Vec<&'a Relay>, SelectError> {
    let Some(limit) = limit else {
        return Ok(inv.relays.iter().collect());
    };
    let patterns = expand(limit)?;
    let mut include = vec![false; inv.relays.len()];
    let mut exclude = vec![false; inv.relays.len()];
    let only_exclusions = patterns.iter().all(|p| p.starts_with('!'));
    for pattern in &patterns {
        let (negate, p) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
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
            return Err(SelectError::NoMatch {
                pattern: pattern.clone(),
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

/// Splits the limit into patterns, reading `@FILE`s (blank lines and `#` comments skipped).
fn expand(limit: &str) -> Result<Vec<String>, SelectError> {
    let mut out = Vec::new();
    for item in limit.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(file) = item.strip_prefix('@') {
            let path = PathBuf::from(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| SelectError::ReadFile { path, source })?;
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        } else {
            out.push(item.to_string());
        }
    }
    Ok(out)
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
