//! Reading on past a wrong type: the key is blanked with spaces in a copy of the text,
//! so the copy parses again with every other byte offset, line and column unchanged.

use std::ops::Range;

/// `text` with the key whose value spans `value` blanked (newlines kept): the whole
/// statement when the key starts its line (a multi-line value with it), or the `key =
/// value` pair of an inline table with one comma next to it (the table's other keys
/// stay). Anything else (an element of an array) blanks the lines the value is on.
/// `None` when there is nothing left to blank.
pub(super) fn blank_key(text: &str, value: Range<usize>) -> Option<String> {
    let b = text.as_bytes();
    let end = value.end.min(text.len());
    let start = value.start.min(end);
    if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
        return None;
    }
    let line_start = |i: usize| text[..i].rfind('\n').map_or(0, |n| n + 1);
    let line_end = |i: usize| text[i..].find('\n').map_or(text.len(), |n| i + n);
    // Back over spaces and tabs from `i`.
    let back = |mut i: usize| {
        while i > 0 && matches!(b[i - 1], b' ' | b'\t') {
            i -= 1;
        }
        i
    };
    let eq = back(start);
    let key = (eq > 0 && b[eq - 1] == b'=').then(|| {
        let key_end = back(eq - 1);
        let mut k = key_end;
        while k > 0 && (b[k - 1].is_ascii_alphanumeric() || matches!(b[k - 1], b'_' | b'-' | b'.'))
        {
            k -= 1;
        }
        (k < key_end).then_some(k)
    });
    let lines = line_start(start)..line_end(end);
    let range = match key.flatten() {
        Some(k) if back(k) == line_start(k) => line_start(k)..line_end(end),
        Some(k) if b[back(k) - 1] == b',' => back(k) - 1..end,
        Some(k) if b[back(k) - 1] == b'{' => {
            let mut after = end;
            while after < b.len() && matches!(b[after], b' ' | b'\t') {
                after += 1;
            }
            k..if b.get(after) == Some(&b',') {
                after + 1
            } else {
                end
            }
        }
        _ => lines,
    };
    let mut out = b.to_vec();
    let mut changed = false;
    for c in &mut out[range] {
        if !matches!(*c, b'\n' | b' ') {
            *c = b' ';
            changed = true;
        }
    }
    // Whole characters were replaced (the range starts and ends at ASCII or at a
    // line's ends), so the text is still UTF-8.
    changed.then(|| String::from_utf8(out).ok()).flatten()
}

/// The key a "missing field" error is about (`relay[0].new`), if it is one.
pub(super) fn missing_field(path: &str, message: &str) -> Option<String> {
    let name = message.strip_prefix("missing field `")?.strip_suffix('`')?;
    Some(if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    })
}

/// Whether `key` is, or holds, the field of a problem already found: a key missing
/// only because it was blanked to read on past that problem.
pub(super) fn blanked(key: &str, problem_fields: &[&str]) -> bool {
    problem_fields.iter().any(|f| {
        f.strip_prefix(key)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    })
}

/// A settings key's path inside its layer (`dns.server` of `relay[2].dns.server`,
/// `defaults.dns.server` and `groups.dc1.dns.server`); other paths as they are.
pub(super) fn in_layer(field: &str) -> &str {
    if let Some(rest) = field.strip_prefix("defaults.") {
        rest
    } else if let Some(rest) = field.strip_prefix("groups.") {
        rest.split_once('.').map_or(field, |(_, key)| key)
    } else if let Some(rest) = field.strip_prefix("relay[") {
        rest.split_once("].").map_or(field, |(_, key)| key)
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(text: &str, value: &str) -> String {
        let at = text.find(value).expect("value in text");
        blank_key(text, at..at + value.len()).expect("blanked")
    }

    #[test]
    fn a_statement_an_inline_pair_or_lines_are_blanked_in_place() {
        let t = "[fleet]\nforks = \"many\" # comment\ncutovers = 2\n";
        assert_eq!(
            blank(t, "\"many\""),
            "[fleet]\n                        \ncutovers = 2\n"
        );
        let t = "new = { ssh = \"h\", port = \"22\" }\n";
        let gone = " ".repeat(", port = \"22\"".len());
        assert_eq!(
            blank(t, "\"22\""),
            format!("new = {{ ssh = \"h\"{gone} }}\n")
        );
        let t = "new = { port = \"22\" , ssh = \"h\" }\n";
        let gone = " ".repeat("port = \"22\" ,".len());
        assert_eq!(
            blank(t, "\"22\""),
            format!("new = {{ {gone} ssh = \"h\" }}\n")
        );
        let t = "waves = [1,\n  \"x\",\n]\n";
        assert_eq!(blank(t, "\"x\""), "waves = [1,\n      \n]\n");
        for (t, v) in [("a = \"é\"\n", "\"é\""), ("a.b = 1\n", "1")] {
            let out = blank(t, v);
            assert_eq!(out.len(), t.len());
            assert!(out.trim().is_empty(), "{out:?}");
        }
        assert_eq!(blank_key("   \n", 0..3), None);
        assert_eq!(blank_key("a = 1", 3..99), Some("     ".into()));
    }

    #[test]
    fn a_missing_field_is_known_blanked_by_its_path() {
        let m = missing_field("relay[0]", "missing field `new`").expect("missing");
        assert_eq!(m, "relay[0].new");
        assert!(blanked(&m, &["fleet.forks", "relay[0].new.port"]));
        assert!(blanked(&m, &["relay[0].new"]));
        assert!(!blanked(&m, &["relay[0].newer", "relay[1].new.port"]));
        assert_eq!(
            missing_field("", "missing field `fleet`").as_deref(),
            Some("fleet")
        );
        assert_eq!(missing_field("fleet", "invalid type: string"), None);
        for f in [
            "defaults.dns.tsig_key_file",
            "groups.dc1.dns.tsig_key_file",
            "relay[12].dns.tsig_key_file",
        ] {
            assert_eq!(in_layer(f), "dns.tsig_key_file");
        }
        assert_eq!(in_layer("fleet.forks"), "fleet.forks");
        assert_eq!(in_layer("relay[0]"), "relay[0]");
    }
}
