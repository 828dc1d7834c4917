//! Where a credential stands in text, told by its shape: the value of a
//! credential-named `NAME=value` (also `--name=value` and a URL query parameter), of
//! a credential header (`Authorization: Scheme credential`, `X-Auth-Token: value`)
//! or JSON field (`"token": "value"`), the password of a URL's `user:pass@`; in a
//! command line also the argument of a credential-named option (`--token value`).
//!
//! A value ends where a shell word ends (whitespace, `;`, `&`, `|`, a quote, a
//! parenthesis, a redirection), so `PASSWORD=x; exit 0` gives `x`, never `x;`: the
//! mask must not eat the command that follows. A quoted value (`TOKEN='a b'`) runs to
//! its closing quote. A value that is a path or a `$VARIABLE` is not a credential.

use std::ops::Range;

/// Which shapes to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Text a program printed: the shapes every text has.
    Text,
    /// An operator's command line: also `--name value` options. Not in printed
    /// text, where an option name is followed by prose ("--token: missing value").
    CommandLine,
}

/// Whether a setting, option or variable called `name` holds a credential.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase();
    // The shell's working directories, not passwords (`MYSQL_PWD` is one).
    if n == "pwd" || n == "oldpwd" {
        return false;
    }
    // Paths to secrets (a key file, an agent socket) are not secrets themselves.
    let path_like = ["sock", "file", "path", "dir"]
        .iter()
        .any(|suffix| n.ends_with(suffix));
    // `auth` in `GIT_AUTHOR_NAME` is an author, in `AUTHORIZATION` a credential.
    let auth = n.contains("auth") && (!n.contains("author") || n.contains("authoriz"));
    !path_like
        && (auth
            || [
                "token",
                "secret",
                "passw",
                "pwd",
                "apikey",
                "api_key",
                "api-key",
                "credential",
                "private",
                "key",
            ]
            .iter()
            .any(|w| n.contains(w)))
}

/// Whether `value` names a file (a key file, a socket, a working directory) rather
/// than being a secret: rooted like a path. Base64 (a TSIG secret, an API key) may
/// start with `/` too; its `+` or `=` padding says it is not a path.
pub fn is_path(value: &str) -> bool {
    let v = value.trim();
    let rooted = v == "~" || ["/", "~/", "./", "../"].iter().any(|p| v.starts_with(p));
    rooted && !v.contains('+') && !v.ends_with('=')
}

/// The byte ranges of the credentials in `text`: sorted, not overlapping, not empty.
pub fn spans(text: &str, scan: Scan) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    named_values(text, &mut found);
    url_passwords(text, &mut found);
    if scan == Scan::CommandLine {
        options(text, &mut found);
    }
    found.retain(|r| !r.is_empty());
    merge(found)
}

/// Credentials written into a shell command line, to be registered as secrets.
pub fn secrets_in_command(line: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for r in spans(line, Scan::CommandLine) {
        let value = &line[r];
        if value.chars().count() >= super::MIN_LEN && !found.iter().any(|f| f == value) {
            found.push(value.to_string());
        }
    }
    found
}

/// The values of credential-named environment variables, paths left out (`PWD`,
/// `XAUTHORITY`, `GNOME_KEYRING_CONTROL` name directories and files).
pub fn secrets_in_environment(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    vars.into_iter()
        .filter(|(name, value)| is_secret_name(name) && !is_path(value))
        .map(|(_, value)| value)
        .collect()
}

/// Characters that end an unquoted value: where a shell word ends.
fn ends_value(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ';' | '&' | '|' | '\'' | '"' | '`' | '(' | ')' | '<' | '>'
        )
}

/// Characters of a variable, option, header or parameter name (ASCII only, so a
/// byte-wise walk back over them never splits a character).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// The unquoted word starting at `start`.
fn token_at(text: &str, start: usize) -> Range<usize> {
    let end = text[start..]
        .find(ends_value)
        .map_or(text.len(), |i| start + i);
    start..end
}

/// The value starting at `start`: a quoted one runs to its closing quote (the quotes
/// are not part of it) or the end of the line, an unquoted one to the end of the word.
fn value_at(text: &str, start: usize) -> Range<usize> {
    match text[start..].chars().next() {
        Some(q @ ('\'' | '"')) => {
            let from = start + 1;
            let end = text[from..]
                .find([q, '\n'])
                .map_or(text.len(), |i| from + i);
            from..end
        }
        _ => token_at(text, start),
    }
}

/// `start` moved past spaces and tabs (not newlines: a value is on its name's line).
fn skip_blanks(text: &str, start: usize) -> usize {
    let skipped = text[start..]
        .bytes()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    start + skipped
}

/// A value that only refers to a secret (`$TOKEN`, `$(cat f)`) or names a file.
fn not_a_credential(value: &str) -> bool {
    value.starts_with('$') || is_path(value)
}

/// `NAME=value`, `Name: value` headers and `"name": "value"` JSON fields.
fn named_values(text: &str, found: &mut Vec<Range<usize>>) {
    let bytes = text.as_bytes();
    for (at, sep) in text.match_indices([':', '=']) {
        let json = sep == ":" && at > 0 && bytes[at - 1] == b'"';
        let name_end = if json { at - 1 } else { at };
        let name_start = name_end
            - bytes[..name_end]
                .iter()
                .rev()
                .take_while(|&&b| is_name_byte(b))
                .count();
        let name = &text[name_start..name_end];
        if name.is_empty() || (json && (name_start == 0 || bytes[name_start - 1] != b'"')) {
            continue;
        }
        // `NAME= value` is no assignment in a shell; a header's value follows a blank.
        let start = if sep == ":" {
            skip_blanks(text, at + 1)
        } else {
            at + 1
        };
        if name.to_ascii_lowercase().contains("authorization") {
            found.extend(authorization(text, start));
            continue;
        }
        let wanted = match sep {
            "=" => is_secret_name(name),
            // JSON: only string values (`"private": false` is no secret).
            _ if json => is_secret_name(name) && text[start..].starts_with('"'),
            // A header name has a dash (`X-Auth-Token:`); this keeps out prose and
            // `key: value` lines that merely mention a key.
            _ => name.contains('-') && is_secret_name(name),
        };
        if wanted {
            let value = value_at(text, start);
            if !not_a_credential(&text[value.clone()]) {
                found.push(value);
            }
        }
    }
}

/// The credential of an `Authorization` header whose value starts at `start`:
/// the word after the scheme (`Bearer`, `Basic`, any word of letters), or the only
/// word when there is no scheme (`Authorization: ghp_...`).
fn authorization(text: &str, start: usize) -> Option<Range<usize>> {
    // `Authorization: "Bearer x"` (JSON, a quoted value): inside the quote.
    let start = match text[start..].chars().next() {
        Some('\'' | '"') => start + 1,
        _ => start,
    };
    let first = token_at(text, start);
    if first.is_empty() {
        return None;
    }
    let scheme = text[first.clone()]
        .chars()
        .all(|c| c.is_ascii_alphabetic() || c == '-');
    if !scheme {
        return Some(first);
    }
    let next = skip_blanks(text, first.end);
    let second = token_at(text, next);
    (next > first.end && !second.is_empty()).then_some(second)
}

/// The password of every `scheme://user:password@host`.
fn url_passwords(text: &str, found: &mut Vec<Range<usize>>) {
    for (at, sep) in text.match_indices("://") {
        let from = at + sep.len();
        let authority_len = text[from..]
            .find(|c: char| matches!(c, '/' | '?' | '#' | '@') || ends_value(c))
            .unwrap_or(text.len() - from);
        let end = from + authority_len;
        if !text[end..].starts_with('@') {
            continue;
        }
        if let Some(colon) = text[from..end].find(':') {
            found.push(from + colon + 1..end);
        }
    }
}

/// The argument of a credential-named option: `--token value`, `--password "a b"`.
fn options(text: &str, found: &mut Vec<Range<usize>>) {
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices('-') {
        // An option starts a word: at the start, after a blank or an opening quote.
        let starts_word = at == 0 || matches!(bytes[at - 1], b' ' | b'\t' | b'\n' | b'\'' | b'"');
        if !starts_word {
            continue;
        }
        let name_end = at + bytes[at..].iter().take_while(|&&b| is_name_byte(b)).count();
        let name = &text[at..name_end];
        if !matches!(bytes.get(name_end), Some(b' ' | b'\t')) || !is_secret_name(name) {
            continue;
        }
        let value = value_at(text, skip_blanks(text, name_end));
        if !not_a_credential(&text[value.clone()]) {
            found.push(value);
        }
    }
}

/// `ranges` sorted, overlapping ones joined.
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
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
        assert!(!is_secret_name("GIT_AUTHOR_NAME"));
        assert!(is_secret_name("PROXY_AUTHORIZATION"));
    }

    /// Printed text: each shape gives exactly its value, nothing around it.
    #[test]
    fn printed_credentials_are_found_by_their_shape() {
        let found = |text: &str| -> Vec<String> {
            spans(text, Scan::Text)
                .into_iter()
                .map(|r| text[r].to_string())
                .collect()
        };
        for (text, values) in [
            ("< X-Auth-Token: t0k3n-9\r", vec!["t0k3n-9"]),
            (
                "{\"token\": \"abc def\", \"private\": false}",
                vec!["abc def"],
            ),
            (
                "\"Authorization\": \"Bearer eyJhbGc.x.y\"",
                vec!["eyJhbGc.x.y"],
            ),
            ("Proxy-Authorization: Basic dXNlcjpw", vec!["dXNlcjpw"]),
            ("authorization failed: Bearer", vec![]),
            // Options only count in command lines: here the next word is prose.
            ("error: --token requires a value", vec![]),
            ("key: value in a list, 12:30:00", vec![]),
        ] {
            assert_eq!(found(text), values, "{text}");
        }
    }
}
