//! Secrets never leave cmfleet in text: logs, events (and so the journal, the
//! reports, the HTML page and the terminal), and the files the reporter writes.
//!
//! Two ways to find one:
//! - known secrets, registered when the inventory is loaded: the TSIG secrets of the
//!   relays' `tsig_key_file`s (a hook or a DNS program may print one, e.g. an
//!   `nsupdate -y` script echoing its command line); the credentials written into
//!   hook command lines (by their shape, below); the values of environment variables
//!   whose names say they hold a credential (hooks and the DNS `command` program
//!   inherit cmfleet's environment, and that is how such a program usually gets
//!   its API token). [`clean`] masks these wherever they appear;
//! - credentials by their shape (`patterns.rs`): what a hook or a DNS program prints
//!   was never seen before it ran (`PASSWORD=...` from a script, a verbose curl's
//!   `Authorization:` line). [`scrub`] masks those too, in the output of every
//!   command cmfleet runs.
//!
//! The list of known secrets is process-wide and only grows, like a CI runner's
//! masks: every writer calls [`clean`] on its way out, so no output path can be
//! handed the wrong (or no) redactor, and a path added later only has to call one
//! function. Paths are never secrets: a credential-named variable often holds a
//! file's (`XAUTHORITY`), and a masked working directory would garble every message
//! that names the state directory.

mod patterns;

use std::borrow::Cow;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

pub use patterns::{is_secret_name, secrets_in_command};
use patterns::{secrets_in_environment, spans, Scan};

/// What a secret is replaced with.
pub const MASK: &str = "[redacted]";

/// Shorter values are not registered as secrets: masking `yes` or `1` everywhere
/// would garble the output and protect nothing. (A value found by its shape is
/// masked whatever its length: there, only that place is masked.)
const MIN_LEN: usize = 6;

/// The known secrets, longest first (so a secret containing another is masked whole).
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds `secret` to the known secrets (ignored when too short to be one, or when it
/// is the directory cmfleet runs in or one above it).
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() < MIN_LEN || is_working_dir(secret) {
        return;
    }
    let mut known = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    if !known.iter().any(|s| s == secret) {
        known.push(secret.to_string());
        known.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Whether `value` is the working directory (as the process or the shell's `PWD`
/// has it) or one of its parents: every path under it would read `[redacted]/...`.
fn is_working_dir(value: &str) -> bool {
    let value = Path::new(value);
    let cwd = std::env::current_dir().ok();
    let pwd = std::env::var_os("PWD").map(std::path::PathBuf::from);
    value.is_absolute()
        && [cwd, pwd]
            .iter()
            .flatten()
            .any(|dir| dir.starts_with(value))
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

/// `text` printed by a program (a hook, a DNS program, any command's output) with
/// credentials masked by their shape, then every known secret ([`clean`]).
pub fn scrub(text: &str) -> Cow<'_, str> {
    let found = spans(text, Scan::Text);
    if found.is_empty() {
        return clean(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for r in found {
        out.push_str(&text[last..r.start]);
        out.push_str(MASK);
        last = r.end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(cleaned(out))
}

/// [`scrub`] into an owned string.
pub fn scrubbed(text: String) -> String {
    match scrub(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(s) => s,
    }
}

/// Registers the values of credential-named environment variables.
pub fn register_environment() {
    let vars = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    for secret in secrets_in_environment(vars) {
        register(&secret);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_bearer_header_inside_quotes_is_masked_in_the_command_and_its_output() {
        let line = r#"sh -c "curl -fsS -H 'Authorization: Bearer BEARER555unit' https://status.example/x""#;
        assert_eq!(secrets_in_command(line), ["BEARER555unit"]);
        assert_eq!(
            secrets_in_command("curl -H 'Authorization: Bearer BEARER555unit' https://s.example"),
            ["BEARER555unit"]
        );
        // Output the hook prints (curl -v): never registered, masked by its shape.
        assert_eq!(
            scrub("> Authorization: Bearer OUTPUT777unit"),
            format!("> Authorization: Bearer {MASK}")
        );
        assert_eq!(
            scrub("authorization: Basic dXNlcjpwYXNzd29yZA== sent"),
            format!("authorization: Basic {MASK} sent")
        );
        assert_eq!(
            scrub("-H 'Authorization: ghp_unit1234'"),
            format!("-H 'Authorization: {MASK}'")
        );
    }

    #[test]
    fn a_credential_assignment_ends_at_the_shell_separator() {
        let line = "echo PASSWORD=UPPER222unit; exit 0";
        assert_eq!(secrets_in_command(line), ["UPPER222unit"]);
        for s in secrets_in_command(line) {
            register(&s);
        }
        assert_eq!(clean(line), format!("echo PASSWORD={MASK}; exit 0"));
        // Printed at run time, never seen before: masked by its shape.
        for (text, masked) in [
            ("PASSWORD=NEVERSEEN1; exit 0", "PASSWORD=[redacted]; exit 0"),
            ("DB_PWD=a1b2c3&&next", "DB_PWD=[redacted]&&next"),
            ("API_KEY=k3y|grep x", "API_KEY=[redacted]|grep x"),
            (
                "export TOKEN='two words' done",
                "export TOKEN='[redacted]' done",
            ),
            (
                "echo \"SECRET=inside\"\nnext",
                "echo \"SECRET=[redacted]\"\nnext",
            ),
            (
                "GET /x?page=2&access_token=abc123xyz HTTP",
                "GET /x?page=2&access_token=[redacted] HTTP",
            ),
            ("STATUS_TOKEN=$TOKEN notify", "STATUS_TOKEN=$TOKEN notify"),
            ("page=2 mode=fast", "page=2 mode=fast"),
        ] {
            assert_eq!(scrub(text), masked, "{text}");
        }
    }

    #[test]
    fn url_credentials_are_masked() {
        assert_eq!(
            secrets_in_command("curl https://user:pw123456@host/"),
            ["pw123456"]
        );
        assert_eq!(
            scrub("fetching https://user:pw654321@host/path failed"),
            format!("fetching https://user:{MASK}@host/path failed")
        );
        assert_eq!(
            scrub("see https://host/a@b and mailto:x@y"),
            "see https://host/a@b and mailto:x@y"
        );
    }

    #[test]
    fn a_path_is_never_a_secret() {
        assert_eq!(
            secrets_in_command(
                "notify --key /etc/notify/key.pem --token ./token.txt PRIVATE_KEY=~/.ssh/id"
            ),
            Vec::<String>::new()
        );
        let text = "KEY=/etc/notify.key --password /run/secrets/db";
        assert_eq!(scrub(text), text);
        let env = [
            ("XAUTHORITY", "/home/op/.Xauthority"),
            ("GNOME_KEYRING_CONTROL", "/run/user/1000/keyring"),
            ("DB_PASSWORD", "hunter2hunter2"),
            ("TSIG_SECRET", "/8Jk+base64secret=="),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(
            secrets_in_environment(env),
            ["hunter2hunter2", "/8Jk+base64secret=="]
        );
    }

    #[test]
    fn the_working_directory_is_never_a_secret() {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "/work/labG".into());
        let env = [("PWD", cwd.as_str()), ("OLDPWD", "/tmp/labG")]
            .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(secrets_in_environment(env), Vec::<String>::new());
        assert!(!is_secret_name("PWD") && !is_secret_name("OLDPWD"));
        assert!(is_secret_name("MYSQL_PWD"));
        // Whatever registers it (a value that happens to be the directory cmfleet runs in).
        register(&cwd);
        register_environment();
        let lock = format!("{cwd}/labG/.cmfleet/journal.lock");
        assert_eq!(clean(&lock), lock);
        assert_eq!(scrub(&lock), lock);
    }
}
