//! Quoting for POSIX shells: every inventory value that reaches a shell goes through here.

/// Quotes `s` so a POSIX shell reads it back as exactly one word.
///
/// Plain words (letters, digits and `@%+=:,./-_`) stay as they are, for readable
/// plans; everything else is wrapped in single quotes, where nothing is special but
/// the single quote itself, which is closed, given in double quotes and reopened
/// (`'it'"'"'s'`). Not `'\''`: quoting never writes a backslash, so a quoted word
/// quoted again (a program inside `sh -c`, an ssh command inside rsync's `-e`)
/// holds no backslash inside single quotes, which shellcheck takes for a mistake
/// (SC1003), and rsync, which splits `-e` itself and knows quotes but no
/// backslashes, reads it as the shell does.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r#"'"'"'"#))
    }
}

/// Joins words into a command line, quoting each.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The shell must hand each hostile value back byte for byte, as one argument.
    #[test]
    fn hostile_values_come_back_as_one_word() {
        let hostile = [
            "a'b",
            "'; rm -rf / #",
            "$(touch /tmp/cmfleet-pwned)",
            "`id`",
            "line1\nline2",
            "-rf",
            "with space",
            "\"dq\" \\ back",
            "",
            "*",
            "~root",
        ];
        for value in hostile {
            let script = format!("printf '%s' {}", quote(value));
            let out = Command::new("sh").arg("-c").arg(&script).output();
            let out = match out {
                Ok(o) => o,
                Err(e) => panic!("cannot run sh: {e}"),
            };
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                value,
                "script: {script}"
            );
        }
    }

    /// A quoted word quoted again comes back whole from two shells, with no
    /// backslash written on the way.
    #[test]
    fn quoting_twice_survives_two_shells_without_a_backslash() {
        for value in ["it's", "a 'b' c", "'", "x'\"'y"] {
            let twice = quote(&format!("printf '%s' {}", quote(value)));
            assert!(!twice.contains('\\') || value.contains('\\'), "{twice}");
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("sh -c {twice}"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            assert_eq!(out.ok().as_deref(), Some(value), "{twice}");
        }
    }

    /// rsync splits its `-e` command itself (quotes, but no backslash escapes):
    /// a quoted word reaches the remote shell command whole.
    #[test]
    fn rsync_reads_a_quoted_word_in_its_remote_shell_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let show = dir.path().join("show");
        std::fs::write(&show, "#!/bin/sh\nprintf '%s\\n' \"$2\" >&2\nexit 1\n").expect("write");
        std::fs::set_permissions(&show, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let value = "/tmp/it's a \"socket\"";
        let e = format!("{} -S {}", show.display(), quote(value));
        let out = Command::new("rsync")
            .args(["-e", &e, "/dev/null", "host:/x"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run rsync (apt-get install rsync): {e}"));
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(said.lines().next(), Some(value), "{said}");
    }

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(
            quote("root@192.0.2.1:/home/vmail/"),
            "root@192.0.2.1:/home/vmail/"
        );
        assert_eq!(join(&["a b", "c"]), "'a b' c");
    }
}
