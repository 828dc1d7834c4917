//! Known secrets never leave cmfleet in text: logs, events (and so the journal, the
//! reports, the HTML page and the terminal), and the files the reporter writes.
//!
//! What cmfleet knows to be secret (registered when the inventory is loaded):
//! - the TSIG secrets of the relays' `tsig_key_file`s (a hook or a DNS program may
//!   print one, e.g. an `nsupdate -y` script echoing its command line);
//! - credentials written into hook command lines: the value of a `NAME=value`
//!   assignment, a `--name value` / `--name=value` option or a URL query parameter
//!   whose name says it holds one (token, secret, password, key, auth, ...), the
//!   credential of an `Authorization:` header, the password of a URL's `user:pass@`;
//! - the values of environment variables whose names say they hold a credential:
//!   hooks and the DNS `command` program inherit cmfleet's environment, and that is
//!   how such a program usually gets its API token.
//!
//! The list is process-wide and only grows, like a CI runner's masks: every writer
//! calls [`clean`] on its way out, so no output path can be handed the wrong (or no)
//! redactor, and a path added later only has to call one function.

use std::borrow::Cow;
use std::sync::{PoisonError, RwLock};

/// What a secret is replaced with.
pub const MASK: &str = "[redacted]";

/// Shorter values are not treated as secrets: masking `yes` or `1` everywhere would
/// garble the output and protect nothing.
const MIN_LEN: usize = 6;

/// The known secrets, longest first (so a secret containing another is masked whole).
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds `secret` to the known secrets (ignored when too short to be one).
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() < MIN_LEN {
        return;
    }
    let mut known = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    if !known.iter().any(|s| s == secret) {
        known.push(secret.to_string());
        known.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every known secret replaced by [`MASK`].
pub fn clean(text: &str) -> Cow<'_, str> {
    let known = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
    if !known.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in known.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

/// [`clean`] into an owned string, for fields that are moved on.
pub fn cleaned(text: String) -> String {
    match clean(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(s) => s,
    }
}

/// Whether a setting, option or variable called `name` holds a credential.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase();
    // Paths to secrets (a key file, an agent socket) are not secrets themselves.
    let path_like = ["sock", "file", "path", "dir"]
        .iter()
        .any(|suffix| n.ends_with(suffix));
    !path_like
        && [
            "token",
            "secret",
            "passw",
            "pwd",
            "apikey",
            "api_key",
            "api-key",
            "auth",
            "credential",
            "private",
            "key",
        ]
        .iter()
        .any(|w| n.contains(w))
}

/// Credentials written into a shell command line (see the module doc).
pub fn secrets_in_command(line: &str) -> Vec<String> {
    let words =
        shlex::split(line).unwrap_or_else(|| line.split_whitespace().map(str::to_string).collect());
    let mut found = Vec::new();
    let mut next_is_secret = false;
    // An unquoted header, `-H Authorization: Bearer TOKEN`: the scheme comes next.
    let mut scheme_next = false;
    for word in &words {
        if std::mem::take(&mut next_is_secret) {
            found.push(word.clone());
            continue;
        }
        let lower = word.to_ascii_lowercase();
        if std::mem::take(&mut scheme_next) || lower == "bearer" {
            next_is_secret = true;
            continue;
        }
        found.extend(in_word(word));
        if lower.ends_with("authorization:") {
            scheme_next = true;
        } else if word.starts_with('-') && !word.contains('=') && is_secret_name(word) {
            next_is_secret = true;
        }
    }
    found.retain(|s| s.chars().count() >= MIN_LEN);
    found
}

/// Credentials inside one word: `NAME=value`, `--name=value`, a URL's password and
/// query parameters, an `Authorization: Scheme credential` header.
fn in_word(word: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, rest)) = word.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_string());
            }
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split(['&', '#']) {
                if let Some((name, value)) = pair.split_once('=') {
                    if is_secret_name(name) {
                        found.push(value.to_string());
                    }
                }
            }
        }
    } else if let Some((name, value)) = word.split_once('=') {
        if is_secret_name(name) {
            found.push(value.to_string());
        }
    }
    let lower = word.to_ascii_lowercase();
    if let Some(at) = lower.find("authorization:") {
        let header = &word[at + "authorization:".len()..];
        let mut parts = header.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(_scheme), Some(credential)) => found.push(credential.to_string()),
            (Some(credential), None) => found.push(credential.to_string()),
            _ => {}
        }
    }
    found
}

/// Registers the values of credential-named environment variables.
pub fn register_environment() {
    for (name, value) in std::env::vars_os() {
        if let (Some(name), Some(value)) = (name.to_str(), value.to_str()) {
            if is_secret_name(name) {
                register(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_command_lines_are_found() {
        let cases = [
            ("STATUS_TOKEN=abc123xyz notify fra1", "abc123xyz"),
            ("notify --token abc123xyz fra1", "abc123xyz"),
            ("notify --api-key=abc123xyz", "abc123xyz"),
            (
                "curl -H 'Authorization: Bearer abc123xyz' https://status.example",
                "abc123xyz",
            ),
            (
                "curl -H Authorization: Bearer abc123xyz https://status.example",
                "abc123xyz",
            ),
            ("curl https://ops:abc123xyz@status.example/x", "abc123xyz"),
            (
                "curl 'https://status.example/x?page=2&access_token=abc123xyz'",
                "abc123xyz",
            ),
            ("notify --password \"abc 123 xyz\"", "abc 123 xyz"),
        ];
        for (line, secret) in cases {
            let found = secrets_in_command(line);
            assert!(found.iter().any(|s| s == secret), "{line}: {found:?}");
        }
    }

    #[test]
    fn ordinary_words_are_not_secrets() {
        for line in [
            "/usr/local/bin/statuspage maintenance",
            "notify --relay fra1 --key-file /etc/notify.key",
            "echo done",
            "curl https://status.example/x?page=2",
        ] {
            assert_eq!(secrets_in_command(line), Vec::<String>::new(), "{line}");
        }
        assert!(!is_secret_name("SSH_AUTH_SOCK"));
        assert!(!is_secret_name("PATH"));
        assert!(is_secret_name("CF_API_TOKEN"));
    }

    #[test]
    fn registered_secrets_are_masked_and_short_values_ignored() {
        register("s3cr3t-unit-test-value");
        register("ab");
        assert_eq!(
            clean("x s3cr3t-unit-test-value y ab"),
            format!("x {MASK} y ab")
        );
        assert!(matches!(clean("nothing here"), Cow::Borrowed(_)));
    }
}
