//! Quoting for POSIX shells: every inventory value that reaches a shell goes through here.

/// Quotes `s` so a POSIX shell reads it back as exactly one word.
///
/// Plain words (letters, digits and `@%+=:,./-_`) stay as they are, for readable
/// plans; everything else is wrapped in single quotes, where nothing is special but
/// the single quote itself, which is closed, escaped and reopened.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
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

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(
            quote("root@192.0.2.1:/home/vmail/"),
            "root@192.0.2.1:/home/vmail/"
        );
        assert_eq!(join(&["a b", "c"]), "'a b' c");
    }
}
