//! `cmfleet report --html`: the run as one self-contained HTML page.
//!
//! A Gantt-style chart (inline SVG) of every relay's six steps over time, read from
//! the journal's per-step `started_ms`/`finished_ms`; each relay's downtime window
//! (`down_since_ms`..`up_again_ms`) is a red band behind its steps; a failed step is
//! drawn red with a mark that links to its error in the table below the chart.
//! No external assets: CSS, the little JavaScript and the SVG are inline, so the file
//! can be mailed or attached to a ticket as is.
//!
//! Pure: the same journal, relay order and `now_ms` give the same page.

use std::fmt::Write as _;

use crate::model::step::Step;
use crate::pipeline::journal::{JournalData, RelayRecord, RelayState, StepRecord, StepStatus};

use super::fmt::duration_ms;

/// Width of the relay-name column, in pixels.
const LABEL_W: f64 = 210.0;
/// Width of the time axis, in pixels.
const PLOT_W: f64 = 1000.0;
/// Room right of the plot for the downtime label.
const TAIL_W: f64 = 90.0;
const ROW_H: f64 = 18.0;
const AXIS_H: f64 = 28.0;
/// A step shorter than this many pixels is still drawn this wide, to be seen.
const MIN_BAR: f64 = 2.0;

/// One colour per step, in order; chosen to stay apart from the downtime red.
const STEP_COLORS: [&str; 6] = [
    "#4e79a7", "#76b7b2", "#b07aa1", "#f28e2b", "#edc948", "#59a14f",
];

/// Renders the page for `relays` (in this order; names missing from the journal are
/// shown as not started). `now_ms` ends the bars of steps still running and the
/// downtime of relays still down.
pub fn render(journal: &JournalData, relays: &[&str], now_ms: u64) -> String {
    let empty = RelayRecord::default();
    let rows: Vec<(&str, &RelayRecord)> = relays
        .iter()
        .map(|n| (*n, journal.relays.get(*n).unwrap_or(&empty)))
        .collect();
    let span = Span::of(&rows, now_ms);
    let mut out = String::with_capacity(16 * 1024 + rows.len() * 2048);
    head(&mut out, journal);
    summary(&mut out, journal, &rows, span);
    legend(&mut out);
    match span {
        Some(span) => chart(&mut out, &rows, span, now_ms),
        None => out.push_str("<p class=\"empty\">Nothing has run yet: no step of the selected relays has started.</p>\n"),
    }
    failures(&mut out, &rows);
    table(&mut out, &rows, now_ms);
    out.push_str(SCRIPT);
    out.push_str("</body>\n</html>\n");
    out
}

/// The time range the chart covers.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    end: u64,
}

impl Span {
    fn of(rows: &[(&str, &RelayRecord)], now_ms: u64) -> Option<Span> {
        let mut start = u64::MAX;
        let mut end = 0;
        for (_, r) in rows {
            for s in &r.steps {
                if let Some(t) = s.started_ms {
                    start = start.min(t);
                    end = end.max(s.finished_ms.unwrap_or(t));
                    if s.status == StepStatus::Running {
                        end = end.max(now_ms);
                    }
                }
                if let Some(t) = s.finished_ms {
                    end = end.max(t);
                }
            }
            if let Some(d) = r.down_since_ms {
                start = start.min(d);
                end = end.max(r.up_again_ms.unwrap_or(now_ms.max(d)));
            }
            for &t in &r.rollbacks {
                start = start.min(t);
                end = end.max(t);
            }
        }
        (start != u64::MAX).then(|| Span {
            start,
            end: end.max(start + 1000),
        })
    }

    fn x(&self, t: u64) -> f64 {
        let frac = t.saturating_sub(self.start) as f64 / (self.end - self.start) as f64;
        LABEL_W + frac.clamp(0.0, 1.0) * PLOT_W
    }
}

fn head(out: &mut String, journal: &JournalData) {
    let title = format!("cmfleet timeline — {}", journal.inventory.display());
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"generator\" content=\"cmfleet {}\">\n<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n\
         <h1>cmfleet timeline</h1>\n<p class=\"meta\">inventory <code>{}</code></p>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&title),
        CSS,
        esc(&journal.inventory.display().to_string()),
    );
}

fn summary(
    out: &mut String,
    _journal: &JournalData,
    rows: &[(&str, &RelayRecord)],
    span: Option<Span>,
) {
    let count = |st: RelayState| rows.iter().filter(|(_, r)| r.state() == st).count();
    let failed = rows
        .iter()
        .filter(|(_, r)| r.failed_step().is_some())
        .count();
    let mut downtimes: Vec<u64> = rows
        .iter()
        .filter_map(|(_, r)| Some(r.up_again_ms?.saturating_sub(r.down_since_ms?)))
        .collect();
    downtimes.sort_unstable();
    out.push_str("<ul class=\"counts\">\n");
    let _ = writeln!(out, "<li><b>{}</b> relays</li>", rows.len());
    let _ = writeln!(
        out,
        "<li class=\"done\"><b>{}</b> done</li>",
        count(RelayState::Done)
    );
    let _ = writeln!(
        out,
        "<li class=\"down\"><b>{}</b> DOWN</li>",
        count(RelayState::Down)
    );
    let _ = writeln!(
        out,
        "<li class=\"failed\"><b>{failed}</b> with a failed step</li>"
    );
    let _ = writeln!(out, "<li><b>{}</b> staged</li>", count(RelayState::Staged));
    let _ = writeln!(
        out,
        "<li><b>{}</b> not started</li>",
        count(RelayState::NotStarted)
    );
    out.push_str("</ul>\n");
    if let Some(span) = span {
        let _ = writeln!(
            out,
            "<p class=\"meta\">from {} to {} UTC ({})</p>",
            utc(span.start),
            utc(span.end),
            duration_ms(span.end - span.start)
        );
    }
    if let (Some(min), Some(max)) = (downtimes.first(), downtimes.last()) {
        let median = downtimes[downtimes.len() / 2];
        let _ = writeln!(
            out,
            "<p class=\"meta\">downtime of {} migrated relay(s): min {}, median {}, max {}</p>",
            downtimes.len(),
            duration_ms(*min),
            duration_ms(median),
            duration_ms(*max)
        );
    }
}

fn legend(out: &mut String) {
    out.push_str("<div class=\"legend\">");
    for step in Step::ALL {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{}</span>",
            STEP_COLORS[usize::from(step.number() - 1)],
            esc(&step.to_string())
        );
    }
    out.push_str(
        "<span><i class=\"lg-down\"></i>downtime (step 3 start to step 6 end)</span>\
         <span><i class=\"lg-failed\"></i>failed step (click for the error)</span>\
         <span><i class=\"lg-running\"></i>running or interrupted</span>\
         <span><i class=\"lg-rollback\"></i>rollback</span>\
         <label><input type=\"checkbox\" id=\"only-problems\"> only relays with a failure or DOWN</label></div>\n",
    );
}

fn chart(out: &mut String, rows: &[(&str, &RelayRecord)], span: Span, now_ms: u64) {
    let width = LABEL_W + PLOT_W + TAIL_W;
    let height = AXIS_H + ROW_H * rows.len() as f64 + 4.0;
    let _ = writeln!(
        out,
        "<div class=\"chart\"><svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\" \
         width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         font-family=\"sans-serif\" font-size=\"11\">"
    );
    axis(out, span, height);
    for (i, (name, r)) in rows.iter().enumerate() {
        let y = AXIS_H + ROW_H * i as f64;
        let problem = r.failed_step().is_some() || r.state() == RelayState::Down;
        let _ = writeln!(
            out,
            "<g class=\"row{}\" data-relay=\"{}\">",
            if problem { " problem" } else { "" },
            esc(name)
        );
        if i % 2 == 1 {
            let _ = writeln!(
                out,
                "<rect class=\"stripe\" x=\"0\" y=\"{y:.1}\" width=\"{width:.0}\" height=\"{ROW_H}\"/>"
            );
        }
        let _ = writeln!(
            out,
            "<text class=\"name\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LABEL_W - 6.0,
            y + ROW_H - 5.0,
            esc(&shorten(name, 32))
        );
        if let Some(down) = r.down_since_ms {
            let up = r.up_again_ms.unwrap_or(now_ms.max(down));
            let (x0, x1) = (span.x(down), span.x(up));
            let still = if r.up_again_ms.is_none() {
                " still DOWN"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "<rect class=\"down\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}: downtime {}{still}</title></rect>",
                y + 1.0,
                (x1 - x0).max(MIN_BAR),
                ROW_H - 2.0,
                esc(name),
                duration_ms(up.saturating_sub(down)),
            );
            let _ = writeln!(
                out,
                "<text class=\"downlabel\" x=\"{:.1}\" y=\"{:.1}\">down {}{}</text>",
                LABEL_W + PLOT_W + 4.0,
                y + ROW_H - 5.0,
                duration_ms(up.saturating_sub(down)),
                if still.is_empty() { "" } else { "+" }
            );
        }
        for step in Step::ALL {
            step_bar(out, name, step, r.step(step), span, y, now_ms);
        }
        for &t in &r.rollbacks {
            let x = span.x(t);
            let _ = writeln!(
                out,
                "<path class=\"rollback\" d=\"M{x:.1} {:.1} l-4 -6 h8 z\"><title>{}: rolled back at {} UTC</title></path>",
                y + ROW_H - 2.0,
                esc(name),
                utc(t)
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg></div>\n");
}

fn axis(out: &mut String, span: Span, height: f64) {
    let total = span.end - span.start;
    let tick = nice_tick(total);
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{LABEL_W}\" y1=\"{AXIS_H}\" x2=\"{:.0}\" y2=\"{AXIS_H}\"/>",
        LABEL_W + PLOT_W
    );
    let mut t = 0;
    while t <= total {
        let x = span.x(span.start + t);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{height:.0}\"/>\
             <text class=\"tick\" x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
            AXIS_H - 4.0,
            AXIS_H - 10.0,
            offset_label(t)
        );
        t += tick;
    }
}

fn step_bar(
    out: &mut String,
    relay: &str,
    step: Step,
    s: &StepRecord,
    span: Span,
    y: f64,
    now_ms: u64,
) {
    let Some(start) = s.started_ms else { return };
    let end = match (s.finished_ms, s.status) {
        (Some(f), _) => f,
        (None, StepStatus::Running) => now_ms.max(start),
        // Started, never finished, not running: the controller died mid-step.
        (None, _) => start,
    };
    let (x0, x1) = (span.x(start), span.x(end));
    let n = usize::from(step.number() - 1);
    let class = match s.status {
        StepStatus::Failed => "step failed",
        StepStatus::Running => "step running",
        StepStatus::Pending => "step running",
        StepStatus::Skipped => "step skipped",
        StepStatus::Done => "step",
    };
    let mut tip = format!(
        "{relay}\n{step}: {}\n{} UTC, {}",
        status_name(s.status),
        utc(start),
        duration_ms(end.saturating_sub(start))
    );
    if s.attempts > 1 {
        let _ = write!(tip, "\nattempt {} (the bar shows the last)", s.attempts);
    }
    if let Some(note) = &s.note {
        let _ = write!(tip, "\n{note}");
    }
    if let Some(e) = &s.error {
        let _ = write!(tip, "\nerror: {}", shorten(e, 300));
    }
    let bar = format!(
        "<rect class=\"{class}\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}</title></rect>",
        y + 4.0,
        (x1 - x0).max(MIN_BAR),
        ROW_H - 8.0,
        STEP_COLORS[n],
        esc(&tip)
    );
    if s.status == StepStatus::Failed {
        let _ = writeln!(
            out,
            "<a href=\"#{id}\" class=\"faillink\">{bar}<path class=\"failmark\" d=\"M{x:.1} {y0:.1} l5 -5 m-5 0 l5 5\" transform=\"translate(-2.5 0)\"/></a>",
            id = anchor(relay, step),
            x = x1 + 4.0,
            y0 = y + ROW_H / 2.0 + 2.5,
        );
    } else {
        out.push_str(&bar);
        out.push('\n');
    }
}

/// The errors of failed steps, each with the anchor the chart's marks link to.
fn failures(out: &mut String, rows: &[(&str, &RelayRecord)]) {
    let failed: Vec<(&str, Step, &StepRecord)> = rows
        .iter()
        .flat_map(|(name, r)| {
            Step::ALL
                .into_iter()
                .filter(|s| r.step(*s).status == StepStatus::Failed)
                .map(move |s| (*name, s, r.step(s)))
        })
        .collect();
    if failed.is_empty() {
        out.push_str("<h2>Failures</h2>\n<p class=\"empty\">None.</p>\n");
        return;
    }
    let _ = writeln!(out, "<h2>Failures ({})</h2>", failed.len());
    for (name, step, s) in failed {
        let kind = s
            .error_kind
            .map(|k| k.to_string())
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(
            out,
            "<div class=\"failure\" id=\"{}\"><h3>{} — step {}</h3>\
             <p class=\"meta\">{kind} after {} attempt(s), at {} UTC</p><pre>{}</pre></div>",
            anchor(name, step),
            esc(name),
            esc(&step.to_string()),
            s.attempts,
            s.finished_ms.map_or_else(|| "?".into(), utc),
            esc(s.error.as_deref().unwrap_or("(no error recorded)"))
        );
    }
}

/// One line per relay: state, downtime, the failed step, what NEW runs.
fn table(out: &mut String, rows: &[(&str, &RelayRecord)], now_ms: u64) {
    out.push_str(
        "<h2>Relays</h2>\n<table class=\"relays\">\n<thead><tr><th>relay</th><th>state</th>\
         <th>downtime</th><th>failed step</th><th>rollbacks</th><th>chatmail deployed on NEW</th></tr></thead>\n<tbody>\n",
    );
    for (name, r) in rows {
        let state = match r.state() {
            RelayState::NotStarted => "not started",
            RelayState::Staged => "staged",
            RelayState::Down => "DOWN",
            RelayState::Done => "done",
        };
        let downtime = r.down_since_ms.map_or(String::new(), |d| {
            let up = r.up_again_ms.unwrap_or(now_ms.max(d));
            duration_ms(up - d)
        });
        let failed = r.failed_step().map_or(String::new(), |s| {
            format!(
                "<a href=\"#{}\">{}</a>",
                anchor(name, s),
                esc(&s.to_string())
            )
        });
        // The full commits in the tooltip: the cell shows them short.
        let full: Vec<String> = [(2, &r.deployed.preconfigure), (6, &r.deployed.activate)]
            .iter()
            .filter_map(|(n, c)| c.as_ref().map(|c| format!("step {n}: {c}")))
            .collect();
        let deployed = if full.is_empty() {
            String::new()
        } else {
            format!(
                "<code title=\"{}\">{}</code>",
                esc(&full.join("\n")),
                esc(&super::fmt::deployed(&r.deployed))
            )
        };
        let _ = writeln!(
            out,
            "<tr class=\"st-{}\"><td>{}</td><td>{state}</td><td>{downtime}</td><td>{failed}</td><td>{}</td><td>{deployed}</td></tr>",
            state.replace(' ', "-").to_lowercase(),
            esc(name),
            r.rollbacks.len(),
        );
    }
    out.push_str("</tbody></table>\n");
}

fn status_name(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "interrupted",
        StepStatus::Running => "running",
        StepStatus::Done => "done",
        StepStatus::Failed => "FAILED",
        StepStatus::Skipped => "skipped",
    }
}

/// An id for a relay's failed step: only characters safe in ids and URLs.
fn anchor(relay: &str, step: Step) -> String {
    let clean: String = relay
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("err-{clean}-{}", step.number())
}

/// Escapes text for HTML and SVG content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    super::fmt::cut(s, max, false)
}

/// A tick interval giving at most about ten ticks over `total` milliseconds.
fn nice_tick(total: u64) -> u64 {
    const STEPS: [u64; 17] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    ];
    let secs = total.div_ceil(1000).max(1);
    let step = STEPS
        .iter()
        .copied()
        .find(|s| secs / s <= 10)
        .unwrap_or(86400);
    step * 1000
}

/// `+45s`, `+12:30`, `+2h05`: time since the chart's start.
fn offset_label(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("+{s}s")
    } else if s < 3600 {
        format!("+{}:{:02}", s / 60, s % 60)
    } else {
        format!("+{}h{:02}", s / 3600, s / 60 % 60)
    }
}

/// `2026-03-14 01:02:03` (UTC) from milliseconds since the epoch.
fn utc(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
        .trim_end_matches('Z')
        .to_string()
}

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}h3{font-size:14px;margin:0 0 2px}
.meta{color:#555;margin:2px 0}code{font-size:13px}
ul.counts{list-style:none;padding:0;margin:8px 0;display:flex;gap:18px;flex-wrap:wrap}
ul.counts .down b,ul.counts .failed b{color:#c0392b}ul.counts .done b{color:#2e7d32}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin:10px 0;font-size:12px;align-items:center}
.legend i{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle;border-radius:2px}
.legend .lg-down{background:rgba(231,76,60,.28);border:1px solid #e74c3c}
.legend .lg-failed{background:#d62728;outline:2px solid #7b0000}
.legend .lg-running{background:#bbb;border:1px dashed #333}
.legend .lg-rollback{background:#333;width:8px;clip-path:polygon(0 0,100% 0,50% 100%)}
.chart{overflow-x:auto;border:1px solid #ddd;border-radius:4px}
svg .stripe{fill:#f6f7f9}svg .name{fill:#222}svg .tick{fill:#666}
svg .axis{stroke:#999}svg .grid{stroke:#e5e5e5}
svg .down{fill:rgba(231,76,60,.25);stroke:#e74c3c;stroke-width:1}
svg .downlabel{fill:#c0392b}
svg .step{stroke:rgba(0,0,0,.25);stroke-width:.5}
svg .step.skipped{opacity:.45}
svg .step.running{stroke:#333;stroke-dasharray:3 2;stroke-width:1}
svg .step.failed{fill:#d62728;stroke:#7b0000;stroke-width:1.5}
svg .failmark{stroke:#7b0000;stroke-width:2}
svg .faillink{cursor:pointer}svg .faillink:hover .step{fill:#ff4136}
svg .rollback{fill:#333}
svg .row.hidden{display:none}
.failure{border-left:4px solid #d62728;padding:6px 10px;margin:8px 0;background:#fdf3f2}
.failure:target{background:#fbd9d5;outline:2px solid #d62728}
.failure pre{white-space:pre-wrap;margin:4px 0 0;font-size:12px}
table.relays{border-collapse:collapse;font-size:13px}
table.relays th,table.relays td{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}
table.relays tr.st-down td{color:#c0392b;font-weight:bold}
.empty{color:#777}
";

/// Hides the rows without a problem when asked; everything works without it.
const SCRIPT: &str = "<script>
(function(){
  var box=document.getElementById('only-problems');
  var svg=document.getElementById('timeline');
  if(!box||!svg)return;
  box.addEventListener('change',function(){
    var rows=svg.querySelectorAll('g.row'),y=0,h=18,top=28;
    for(var i=0;i<rows.length;i++){
      var g=rows[i],hide=box.checked&&!g.classList.contains('problem');
      g.classList.toggle('hidden',hide);
      if(!hide){g.setAttribute('transform','translate(0 '+((y-i)*h)+')');y++;}
    }
    var height=top+h*(box.checked?y:rows.length)+4;
    svg.setAttribute('height',height);
    svg.setAttribute('viewBox','0 0 '+svg.getAttribute('width')+' '+height);
  });
})();
</script>
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::step::{Commit, ErrorKind};
    use std::collections::BTreeMap;

    const T0: u64 = 1_773_450_000_000;

    fn done(start: u64, end: u64) -> StepRecord {
        StepRecord {
            status: StepStatus::Done,
            attempts: 1,
            started_ms: Some(T0 + start),
            finished_ms: Some(T0 + end),
            ..StepRecord::default()
        }
    }

    /// Three relays: migrated, failed at step 4 (DOWN) after a rollback, never started.
    fn journal() -> JournalData {
        let mut relays = BTreeMap::new();
        let ok = RelayRecord {
            steps: vec![
                done(0, 10_000),
                done(10_000, 12_000),
                done(12_000, 14_000),
                done(14_000, 18_000),
                StepRecord {
                    status: StepStatus::Skipped,
                    note: Some("skipped: dns provider \"none\"".into()),
                    ..done(18_000, 18_010)
                },
                done(18_010, 20_000),
            ],
            down_since_ms: Some(T0 + 12_000),
            up_again_ms: Some(T0 + 20_000),
            deployed: crate::pipeline::journal::Deployed {
                preconfigure: Commit::new(&"a".repeat(40)).ok(),
                activate: Commit::new(&"b".repeat(40)).ok(),
            },
            ..RelayRecord::default()
        };
        relays.insert("c1.example.org".to_string(), ok);
        let mut bad = RelayRecord::default();
        bad.steps[0] = done(1_000, 9_000);
        bad.steps[1] = done(9_000, 11_000);
        bad.steps[2] = done(11_000, 13_000);
        bad.steps[3] = StepRecord {
            status: StepStatus::Failed,
            attempts: 3,
            started_ms: Some(T0 + 20_000),
            finished_ms: Some(T0 + 25_000),
            error: Some("rsync: connection unexpectedly closed <NEW> & \"gone\"".into()),
            error_kind: Some(ErrorKind::Transient),
            note: None,
        };
        bad.down_since_ms = Some(T0 + 11_000);
        bad.rollbacks = vec![T0 + 15_000];
        relays.insert("c2.example.org".to_string(), bad);
        JournalData {
            version: 1,
            inventory: "/srv/fleet/fleet.toml".into(),
            relays,
        }
    }

    fn page() -> String {
        render(
            &journal(),
            &["c1.example.org", "c2.example.org", "c3.example.org"],
            T0 + 30_000,
        )
    }

    #[test]
    fn snapshot() {
        // The page without its constant stylesheet and script.
        let html = page().replace(CSS, "").replace(SCRIPT, "");
        insta::assert_snapshot!(html);
    }

    #[test]
    fn self_contained() {
        let html = page();
        // The only URL allowed is the SVG namespace, which loads nothing.
        let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http:", "https:", "src=", "<link", "@import", "url("] {
            assert!(
                !without_ns.contains(needle),
                "external reference {needle:?}"
            );
        }
    }

    #[test]
    fn failures_link_to_their_error_and_text_is_escaped() {
        let html = page();
        assert!(html.contains("<a href=\"#err-c2.example.org-4\" class=\"faillink\">"));
        assert!(html.contains("<div class=\"failure\" id=\"err-c2.example.org-4\">"));
        assert!(html.contains("closed &lt;NEW&gt; &amp; &quot;gone&quot;"));
        assert!(!html.contains("<NEW>"));
        // The failed relay is still DOWN: its band runs to `now`, 19 s.
        assert!(html.contains("down 19s+"));
        assert!(html.contains("down 8.0s<"));
    }

    /// The checkout moved between steps 2 and 6: the table names both commits,
    /// each with its step, and the tooltip has them in full.
    #[test]
    fn the_commits_deployed_on_new_are_shown_per_relay() {
        let html = page();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        assert!(
            html.contains(&format!(
                "<td><code title=\"step 2: {a}\nstep 6: {b}\">aaaaaaaaaaaa (step 2), bbbbbbbbbbbb (step 6)</code></td></tr>"
            )),
            "{html}"
        );
        assert!(html.contains("<td>1</td><td></td></tr>"), "{html}");
    }

    #[test]
    fn empty_journal() {
        let j = JournalData {
            version: 1,
            inventory: "x.toml".into(),
            relays: BTreeMap::new(),
        };
        let html = render(&j, &["a.example.org"], T0);
        assert!(html.contains("Nothing has run yet"));
        assert!(html.contains("<td>a.example.org</td><td>not started</td>"));
    }

    #[test]
    fn utc_and_ticks() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59:59");
        assert_eq!(nice_tick(20_000), 2_000);
        assert_eq!(nice_tick(3_600_000), 600_000);
        assert_eq!(offset_label(125_000), "+2:05");
    }
}
