//! Small text helpers shared by the views, the summary and `status`.

use std::time::Duration;

use crate::pipeline::journal::Deployed;

/// A duration as an operator reads it: `3.2s`, `42s`, `5m 07s`, `2h 03m`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3600, secs / 60 % 60)
    }
}

pub fn duration_ms(ms: u64) -> String {
    duration(Duration::from_millis(ms))
}

/// The chatmail relay commits on NEW, short: one when steps 2 and 6 deployed the
/// same, else each with its step (the checkout moved in between, or one is not
/// known); `-` when none is known.
pub fn deployed(d: &Deployed) -> String {
    match (&d.preconfigure, &d.activate) {
        (None, None) => "-".into(),
        (Some(a), Some(b)) if a == b => a.short().to_string(),
        (a, b) => [(2, a), (6, b)]
            .iter()
            .filter_map(|(n, c)| c.as_ref().map(|c| format!("{} (step {n})", c.short())))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Bytes in binary units, as rsync users expect them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `s` on one line: its lines joined with " / ", runs of whitespace squeezed, cut to
/// `max` characters. An error message must fit one line of the report.
pub fn one_line(s: &str, max: usize) -> String {
    let joined = s
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    cut(&joined, max, false)
}

/// Cuts `s` to at most `max` characters, marking the cut with an ellipsis.
pub fn cut(s: &str, max: usize, force_mark: bool) -> String {
    let count = s.chars().count();
    if count <= max && !force_mark {
        return s.to_string();
    }
    let keep = max.saturating_sub(1).min(count);
    let mut out: String = s.chars().take(keep).collect();
    out.push('…');
    out
}

/// Removes terminal control sequences and other control characters from a line of
/// remote output: it is shown again in the report and must not move the cursor.
pub fn sanitize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte; other escapes: drop ESC and the next char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(3250)), "3.2s");
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(307)), "5m 07s");
        assert_eq!(duration(Duration::from_secs(7380)), "2h 03m");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn errors_fit_one_line() {
        assert_eq!(one_line("  a   b\n\n c", 80), "a b / c");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("abc", 4), "abc");
    }

    #[test]
    fn escapes_are_removed() {
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m\tx\r"), "red x");
    }
}
