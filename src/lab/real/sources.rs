//! The machine's Debian mirror, read from its apt sources: the real lab's rootfs is
//! built from it and keeps it as its own apt source, so the containers' apt (and so
//! chatmail's deploy) fetches from where the machine already can. Both formats apt
//! reads: one-line `deb URI SUITE COMPONENTS...` (`sources.list`, `*.list`) and deb822
//! stanzas (`*.sources`: `Types:`, `URIs:`, `Suites:`, `Components:`, `Enabled:`).
//! Only entries for the suite being built and its `-updates` and `-security` suites
//! count; third-party repositories for the same release are left out (their keys are
//! not in the rootfs).

use std::fs;
use std::path::Path;

/// The mirror used when the machine names none for the suite.
const FALLBACK: &str = "http://deb.debian.org/debian";

/// One-line apt sources (`deb URI SUITE main`) for `suite`, read from the machine's
/// apt configuration under `etc_apt` (normally /etc/apt). Sorted and without
/// duplicates, so the list is the same however the files are arranged.
pub fn debian_sources(etc_apt: &Path, suite: &str) -> Vec<String> {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string(etc_apt.join("sources.list")) {
        texts.push((false, t));
    }
    if let Ok(rd) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let deb822 = p.extension().is_some_and(|e| e == "sources");
            let list = p.extension().is_some_and(|e| e == "list");
            if deb822 || list {
                if let Ok(t) = fs::read_to_string(&p) {
                    texts.push((deb822, t));
                }
            }
        }
    }
    let mut lines = Vec::new();
    for (deb822, text) in texts {
        let entries = if deb822 {
            parse_deb822(&text)
        } else {
            parse_one_line(&text)
        };
        for (uri, s) in entries {
            if is_debian_suite(&s, suite) {
                lines.push(format!("deb {} {s} main", uri.trim_end_matches('/')));
            }
        }
    }
    if !lines.iter().any(|l| l.ends_with(&format!(" {suite} main"))) {
        lines.push(format!("deb {FALLBACK} {suite} main"));
    }
    lines.sort();
    lines.dedup();
    lines
}

/// The suite itself, or its updates or security suite.
fn is_debian_suite(s: &str, suite: &str) -> bool {
    s == suite || s == format!("{suite}-updates") || s == format!("{suite}-security")
}

/// (URI, suite) of every `deb` line.
fn parse_one_line(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        // Options: `[arch=amd64 signed-by=...]`, possibly spanning several words.
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let Some(end) = rest.iter().position(|w| w.ends_with(']')) else {
                continue;
            };
            rest.drain(..=end);
        }
        if let (Some(uri), Some(suite)) = (rest.first(), rest.get(1)) {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
    out
}

/// (URI, suite) of every enabled `deb` stanza, for each of its URIs and suites.
fn parse_deb822(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<String> {
            stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.split_whitespace().map(str::to_string).collect())
                })
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| v != "no");
        if !enabled || !field("Types").iter().any(|t| t == "deb") {
            continue;
        }
        for uri in field("URIs") {
            for suite in field("Suites") {
                out.push((uri.clone(), suite));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_and_one_line_sources_for_the_suite_only() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path();
        fs::create_dir(etc.join("sources.list.d")).unwrap();
        fs::write(
            etc.join("sources.list.d/debian.sources"),
            "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
             URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian-security/\n\
             Suites: bookworm-security\nComponents: main\n\n\
             Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
             Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n",
        )
        .unwrap();
        fs::write(
            etc.join("sources.list.d/cloud.list"),
            "deb [signed-by=/k.gpg] https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
        )
        .unwrap();
        fs::write(
            etc.join("sources.list.d/old.list.disabled"),
            "deb http://x/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            debian_sources(etc, "bookworm"),
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
    }

    #[test]
    fn one_line_with_options_and_a_fallback_when_nothing_matches() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("sources.list"),
            "# comment\ndeb [ arch=amd64 ] http://mirror.example/debian/ bookworm main contrib\n",
        )
        .unwrap();
        assert_eq!(
            debian_sources(dir.path(), "bookworm"),
            ["deb http://mirror.example/debian bookworm main"]
        );
        assert_eq!(
            debian_sources(dir.path(), "trixie"),
            ["deb http://deb.debian.org/debian trixie main"]
        );
    }
}
