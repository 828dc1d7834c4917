//! Spawning a process and streaming its output, line by line, to the log and events.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::model::events::{Event, EventSink};
use crate::model::step::Step;

/// Lines kept for error messages and the report.
const TAIL: usize = 20;

/// Where a command's output goes: the relay's log file and the event stream.
#[derive(Clone)]
pub struct LineSink {
    pub relay: String,
    pub step: Step,
    pub events: EventSink,
    /// The relay's log, shared by all its commands (0600, append).
    pub log: Option<Arc<Mutex<File>>>,
}

impl LineSink {
    /// Writes a line to the log only (e.g. the command about to run).
    pub fn log(&self, line: &str) {
        if let Some(log) = &self.log {
            if let Ok(mut f) = log.lock() {
                // A log write failure must not fail the migration; the journal is authoritative.
                let _ = writeln!(f, "{}", crate::infra::redact::clean(line));
            }
        }
    }

    /// Tells the world the relay waits on a limit (not running, not stuck).
    pub fn waiting(&self, reason: crate::model::events::WaitReason) {
        self.events.send(Event::Waiting {
            relay: self.relay.clone(),
            reason,
        });
    }

    fn line(&self, line: &str) {
        self.log(line);
        if let Some((bytes, percent, rate)) = parse_progress(line) {
            self.events.send(Event::Progress {
                relay: self.relay.clone(),
                step: self.step,
                bytes,
                percent,
                rate,
            });
        } else {
            self.events.send(Event::Output {
                relay: self.relay.clone(),
                step: self.step,
                line: line.to_string(),
            });
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone)]
pub struct ProcessOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// The signal that killed it, when known (a local process; a remote command's
    /// channel reports only an exit code).
    pub signal: Option<i32>,
    /// The last lines of stdout and stderr, interleaved as they came.
    pub tail: Vec<String>,
    /// All of stdout, when captured (small outputs only, e.g. `du`).
    pub stdout: Option<String>,
}

/// Runs `cmd` to completion, streaming its output (stdout and stderr) into `sink`.
///
/// The child runs in a process group of its own: a terminal's Ctrl-C goes to the
/// whole foreground group, and cmfleet's first Ctrl-C must let a running cmdeploy
/// or hook finish (killed mid-activation, cmdeploy leaves the relay DOWN). If this
/// future is dropped (the second Ctrl-C), the whole group is killed, the child's
/// own children (pyinfra, ssh) with it: nothing is orphaned.
pub async fn run_process(mut cmd: Command, sink: &LineSink) -> std::io::Result<ProcessOutput> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut group = GroupGuard(child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (captured, tail) = stream_output(stdout, stderr, sink, Stdout::Sink).await?;
    let status = child.wait().await?;
    // Reaped: the group id may be reused from now on, never signal it.
    group.0 = None;
    Ok(ProcessOutput {
        code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        tail,
        stdout: captured,
    })
}

impl ProcessOutput {
    /// How it ended, for a message: "exited with 7", "was killed by signal 9 (SIGKILL)".
    pub fn ended(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => format!("was killed by signal {signal} ({name})"),
                Err(_) => format!("was killed by signal {signal}"),
            },
            (None, None) => "was killed by a signal".to_string(),
        }
    }

    /// `what` failed: how it ended and the line of its output that says why, e.g.
    /// "the pre_cutover hook exited with 7: the status page refused".
    pub fn failure(&self, what: &str) -> String {
        match super::classify::telling_line(&self.tail) {
            line if line.is_empty() => format!("{what} {}, without output", self.ended()),
            line => format!("{what} {}: {line}", self.ended()),
        }
    }
}

/// Kills a child's process group when dropped before the child was reaped.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        // The group may already be gone; there is nothing to do about a failure.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Where a command's stdout goes.
pub enum Stdout {
    /// Line by line into the sink (the log and events), like stderr.
    Sink,
    /// Returned whole (small outputs only, e.g. a probe's facts).
    Capture,
    /// Record by record (bytes, each ended by `end`, which is removed) into a
    /// bounded channel, for a consumer that reads as the command writes (a manifest
    /// of millions of files is never held whole). Bytes, not text: a file name need
    /// not be UTF-8, and two names must never read as one.
    Records {
        to: tokio::sync::mpsc::Sender<Vec<u8>>,
        end: u8,
    },
    /// As `Records`, for a remote command that asks a question on its stdout and
    /// reads the answer from its stdin: what `answer` yields is written to the
    /// command's stdin; dropped unanswered, the stdin ends (EOF), so the command
    /// never waits on a controller that gave up on it. Remote channels only (a
    /// local process's stdin is /dev/null: EOF at once).
    Dialogue {
        to: tokio::sync::mpsc::Sender<Vec<u8>>,
        end: u8,
        answer: tokio::sync::oneshot::Receiver<Vec<u8>>,
    },
}

/// Reads a command's stdout and stderr to their ends: stderr's lines go to `sink`
/// (and the last ones into the returned tail), stdout's as `to` says. Shared by
/// local processes and remote channels.
pub async fn stream_output(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    sink: &LineSink,
    to: Stdout,
) -> std::io::Result<(Option<String>, Vec<String>)> {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
    let out_task = async {
        match (stdout, to) {
            (Some(s), Stdout::Capture) => read_all(s).await.map(Some),
            (Some(s), Stdout::Sink) => pump(s, sink, &tail).await.map(|_| None),
            (Some(s), Stdout::Records { to, end } | Stdout::Dialogue { to, end, .. }) => {
                forward(s, to, end).await.map(|_| None)
            }
            (None, _) => Ok(None),
        }
    };
    let err_task = async {
        match stderr {
            Some(s) => pump(s, sink, &tail).await,
            None => Ok(()),
        }
    };
    let (captured, _) = tokio::try_join!(out_task, err_task)?;
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Ok((captured, tail))
}

/// Sends each record of `r` (ended by `end`; a last one without it too) to `tx`,
/// at the consumer's pace. A consumer that stops listening does not stop the read:
/// the rest is read and dropped, so the command runs to its end and its exit status
/// is known (a pipe closed under it would make its status a SIGPIPE's instead).
async fn forward(
    r: impl AsyncRead + Unpin,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    end: u8,
) -> std::io::Result<()> {
    let mut r = tokio::io::BufReader::new(r);
    let mut listening = true;
    loop {
        let mut record = Vec::new();
        if r.read_until(end, &mut record).await? == 0 {
            return Ok(());
        }
        if record.last() == Some(&end) {
            record.pop();
        }
        if listening && tx.send(record).await.is_err() {
            listening = false;
        }
    }
}

async fn read_all(mut r: impl AsyncRead + Unpin) -> std::io::Result<String> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// At most one progress line per this interval reaches the log and the events.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Progress lines of one stream, sampled: rsync's `--info=progress2` writes one per
/// file it finishes (125,000 lines, 9.4 MB of log, for one relay of 560,000 files),
/// and a log must grow with what happens, not with the files. The first line is
/// passed, then at most one per [`PROGRESS_EVERY`]; the last one held back is passed
/// before any other line and at the end, so the log still says where a copy stopped.
#[derive(Default)]
struct Sampler {
    /// When a progress line was last passed on.
    passed: Option<tokio::time::Instant>,
    /// The latest progress line not passed on.
    held: Option<String>,
}

impl Sampler {
    /// Whether `line` (a progress line) is passed on now; if not, it is held.
    fn take(&mut self, line: &str) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .passed
            .is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY)
        {
            self.held = Some(line.to_string());
            return false;
        }
        self.passed = Some(now);
        self.held = None;
        true
    }

    /// Passes on the progress line held back, if any.
    fn flush(&mut self, sink: &LineSink) {
        if let Some(line) = self.held.take() {
            sink.line(&line);
        }
    }
}

/// Lines of one stream of one command that reach the log and the events; past
/// them, only a count and the last [`OVER_BUDGET_KEPT`]. A tar into a full disk
/// says "No space left on device" once per file: 745,000 lines, 99 MB of log, for
/// the big relay. The tail for the error message sees every line.
const LINES_LOGGED: usize = 5_000;
const OVER_BUDGET_KEPT: usize = 10;

/// Counts what a stream said past [`LINES_LOGGED`].
#[derive(Default)]
struct Budget {
    logged: usize,
    skipped: usize,
    last: VecDeque<String>,
}

impl Budget {
    /// Whether `line` (not a progress line) is passed on now; if not, it is counted.
    fn take(&mut self, line: &str) -> bool {
        if self.logged < LINES_LOGGED {
            self.logged += 1;
            return true;
        }
        self.skipped += 1;
        if self.last.len() == OVER_BUDGET_KEPT {
            self.last.pop_front();
        }
        self.last.push_back(line.to_string());
        false
    }

    /// At the stream's end: how many lines were not passed on, and the last ones.
    fn flush(&mut self, sink: &LineSink) {
        if self.skipped == 0 {
            return;
        }
        sink.line(&format!(
            "[cmfleet: {} more lines of this output not logged; the last {} follow]",
            self.skipped - self.last.len(),
            self.last.len()
        ));
        for line in self.last.drain(..) {
            sink.line(&line);
        }
    }
}

/// What [`pump`] keeps between lines.
#[derive(Default)]
struct Pace {
    sampler: Sampler,
    budget: Budget,
}

/// Reads `r` and hands every line to the sink (progress lines sampled, see
/// [`Sampler`]; at most [`LINES_LOGGED`] others). rsync's progress updates end in
/// `\r`, so both `\r` and `\n` end a line.
async fn pump(
    mut r: impl AsyncRead + Unpin,
    sink: &LineSink,
    tail: &Mutex<VecDeque<String>>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    let mut pace = Pace::default();
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                emit(&mut pending, sink, tail, &mut pace);
            } else {
                pending.push(b);
            }
        }
    }
    emit(&mut pending, sink, tail, &mut pace);
    pace.sampler.flush(sink);
    pace.budget.flush(sink);
    Ok(())
}

fn emit(pending: &mut Vec<u8>, sink: &LineSink, tail: &Mutex<VecDeque<String>>, pace: &mut Pace) {
    if pending.iter().all(u8::is_ascii_whitespace) {
        pending.clear();
        return;
    }
    // Text a program printed at run time: credentials in it were never registered
    // (a hook's `PASSWORD=...`), so they are masked by their shape, before the line
    // reaches the log, the events or the tail that becomes the error message.
    let line =
        crate::infra::redact::scrubbed(String::from_utf8_lossy(pending).trim_end().to_string());
    pending.clear();
    if parse_progress(&line).is_some() {
        if pace.sampler.take(&line) {
            sink.line(&line);
        }
        return;
    }
    pace.sampler.flush(sink);
    if pace.budget.take(&line) {
        sink.line(&line);
    }
    if let Ok(mut t) = tail.lock() {
        if t.len() == TAIL {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// Marks tar's progress lines (`--checkpoint-action=echo`, see
/// `catalogue::first_copy`) for the progress parser.
pub const TAR_PROGRESS: &str = "cmfleet-copied";

/// Parses a progress line: rsync's `--info=progress2` or tar's checkpoints (see
/// `commands::first_copy`).
pub fn parse_progress(line: &str) -> Option<(u64, u8, String)> {
    parse_rsync_progress(line).or_else(|| parse_tar_progress(line))
}

/// `tar: cmfleet-copied 10240 (10KiB, 9.9MiB/s) of 20480`.
fn parse_tar_progress(line: &str) -> Option<(u64, u8, String)> {
    // tar names itself as it was called: "tar: ", "/usr/bin/tar: ".
    let (_, rest) = line.split_once("tar: ")?;
    let rest = rest.strip_prefix(TAR_PROGRESS)?;
    let (bytes, rest) = rest.trim_start().split_once(' ')?;
    let bytes: u64 = bytes.parse().ok()?;
    let (inside, total) = rest.strip_prefix('(')?.split_once(") of ")?;
    let rate = inside.rsplit(", ").next()?.to_string();
    let total: u64 = total.trim().parse().ok()?;
    let percent = (bytes.saturating_mul(100) / total.max(1)).min(100);
    Some((bytes, u8::try_from(percent).ok()?, rate))
}

/// `  1,234,567  45%   12.34MB/s    0:00:03 ...`.
fn parse_rsync_progress(line: &str) -> Option<(u64, u8, String)> {
    let mut words = line.split_whitespace();
    let bytes: u64 = words.next()?.replace(',', "").parse().ok()?;
    let percent: u8 = words.next()?.strip_suffix('%')?.parse().ok()?;
    let rate = words.next()?;
    rate.ends_with("/s")
        .then(|| (bytes, percent, rate.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse_progress;

    async fn sh(script: &str) -> super::ProcessOutput {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        let sink = super::LineSink {
            relay: "r".into(),
            step: crate::model::step::Step::DisableOld,
            events: crate::model::events::EventSink::discard(),
            log: None,
        };
        super::run_process(cmd, &sink).await.expect("run sh")
    }

    /// A failure reads as a sentence: the exit code, or the signal by number and name.
    #[tokio::test]
    async fn a_failure_says_the_exit_code_or_the_signal() {
        let out = sh("echo the status page refused >&2; exit 7").await;
        assert_eq!(
            out.failure("the pre_cutover hook"),
            "the pre_cutover hook exited with 7: the status page refused"
        );
        let out = sh("kill -9 $$").await;
        assert_eq!(
            out.failure("the pre_cutover hook"),
            "the pre_cutover hook was killed by signal 9 (SIGKILL), without output"
        );
    }

    /// What a program prints is masked by its shape before the log, the events and
    /// the tail (the error message) see it: the value was never registered.
    #[tokio::test]
    async fn credentials_a_program_prints_are_masked_in_its_tail() {
        let out = sh("echo PASSWORD=NEVERSEEN99; exit 3").await;
        assert_eq!(out.tail, ["PASSWORD=[redacted]"]);
        assert_eq!(
            out.failure("the post_cutover hook"),
            "the post_cutover hook exited with 3: PASSWORD=[redacted]"
        );
    }

    /// A consumer that leaves early does not cut the command short: the rest is
    /// read and dropped, so `seq` ends normally instead of by SIGPIPE.
    #[tokio::test]
    async fn a_consumer_that_leaves_does_not_kill_the_command() {
        let mut child = tokio::process::Command::new("seq")
            .args(["1", "200000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn seq");
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let stdout = child.stdout.take();
        let sink = super::LineSink {
            relay: "r".into(),
            step: crate::model::step::Step::FinalSync,
            events: crate::model::events::EventSink::discard(),
            log: None,
        };
        let to = super::Stdout::Records { to: tx, end: b'\n' };
        let none: Option<tokio::process::ChildStderr> = None;
        let (read, first) =
            tokio::join!(super::stream_output(stdout, none, &sink, to), async move {
                rx.recv().await
            });
        read.expect("read");
        assert_eq!(first, Some(b"1".to_vec()));
        let status = child.wait().await.expect("wait");
        assert_eq!(status.code(), Some(0), "{status:?}");
    }

    /// rsync writes a progress line per file: the log gets the first, at most one a
    /// second after it, the last one, and every other line in its place.
    #[tokio::test]
    async fn progress_lines_are_sampled_and_the_last_one_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let log = std::fs::File::create(&path).expect("create log");
        let sink = super::LineSink {
            relay: "r".into(),
            step: crate::model::step::Step::FinalSync,
            events: crate::model::events::EventSink::discard(),
            log: Some(std::sync::Arc::new(std::sync::Mutex::new(log))),
        };
        let script = r#"i=1; while [ $i -le 5000 ]; do printf '%s 50%%  1.00MB/s  0:00:01 (xfr#%s)\r' $i $i; i=$((i+1)); done
echo done copying; printf '9999 100%%  1.00MB/s  0:00:02 (xfr#5001)\r'"#;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        let out = super::run_process(cmd, &sink).await.expect("run sh");
        assert_eq!(out.code, Some(0));
        let text = std::fs::read_to_string(&path).expect("read log");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() <= 12, "{} lines logged: {lines:?}", lines.len());
        assert!(lines[0].starts_with("1 50%"), "{lines:?}");
        let done = lines.iter().position(|l| *l == "done copying");
        let done = done.expect("the other line is logged");
        assert!(
            lines[done - 1].starts_with("5000 50%"),
            "the last progress line before it is kept: {lines:?}"
        );
        assert_eq!(
            lines.last().copied(),
            Some("9999 100%  1.00MB/s  0:00:02 (xfr#5001)")
        );
    }

    /// A command that says the same thing for each of many files (a tar into a full
    /// disk): the log gets the first lines, a count of the rest, and the last ones.
    #[tokio::test]
    async fn a_flood_of_lines_is_logged_up_to_a_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let log = std::fs::File::create(&path).expect("create log");
        let sink = super::LineSink {
            relay: "r".into(),
            step: crate::model::step::Step::InitialSync,
            events: crate::model::events::EventSink::discard(),
            log: Some(std::sync::Arc::new(std::sync::Mutex::new(log))),
        };
        let script = "seq 1 60000 | sed 's/^/tar: f/; s/$/: No space left on device/' >&2; exit 2";
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        let out = super::run_process(cmd, &sink).await.expect("run sh");
        assert_eq!(out.code, Some(2));
        assert_eq!(
            out.tail.last().map(String::as_str),
            Some("tar: f60000: No space left on device"),
            "the error message still ends with the last line"
        );
        let text = std::fs::read_to_string(&path).expect("read log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            super::LINES_LOGGED + 1 + super::OVER_BUDGET_KEPT
        );
        assert_eq!(lines[0], "tar: f1: No space left on device");
        assert_eq!(
            lines[super::LINES_LOGGED],
            "[cmfleet: 54990 more lines of this output not logged; the last 10 follow]"
        );
        assert_eq!(
            lines.last().copied(),
            Some("tar: f60000: No space left on device")
        );
    }

    #[test]
    fn parses_rsync_progress2() {
        assert_eq!(
            parse_progress("     12,345,678  45%   12.34MB/s    0:00:03 (xfr#12, to-chk=0/100)"),
            Some((12_345_678, 45, "12.34MB/s".to_string()))
        );
        assert_eq!(parse_progress("sending incremental file list"), None);
    }

    #[test]
    fn parses_tar_checkpoints() {
        assert_eq!(
            parse_progress("tar: cmfleet-copied 5120000 (4.9MiB, 9.9MiB/s) of 10240000"),
            Some((5_120_000, 50, "9.9MiB/s".to_string()))
        );
        // du counts directories too: tar can pass the estimate.
        assert_eq!(
            parse_progress("tar: cmfleet-copied 300 (300B, 1KiB/s) of 200").map(|p| p.1),
            Some(100)
        );
        assert_eq!(parse_progress("tar: file changed as we read it"), None);
        assert_eq!(
            parse_progress("/usr/bin/tar: cmfleet-copied 10240 (10KiB, 1MiB/s) of 20480")
                .map(|p| p.1),
            Some(50)
        );
    }
}
