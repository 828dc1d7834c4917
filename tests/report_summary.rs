//! The end-of-run report (text snapshot, JSON matching the journal), `failed.txt`
//! feeding `--limit @FILE`, and `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cmfleet::model::inventory::{self, Inventory};
use cmfleet::model::step::ErrorKind;
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{JournalData, RelayRecord, RelayState, StepStatus};
use cmfleet::pipeline::report::{
    self, render_text, status_json_at, status_table_at, write_failed_list, write_json_report,
    ManualClock, ProgressMode, ReportContext, Reporter, RunStats, Summary,
};

/// 2026-03-14 01:00:00 UTC.
const T0: u64 = 1_773_450_000_000;
const SEC: u64 = 1000;

fn at(secs: u64) -> Option<u64> {
    Some(T0 + secs * SEC)
}

fn finish_steps(r: &mut RelayRecord, steps: &[Step]) {
    for s in steps {
        let rec = r.step_mut(*s);
        rec.status = StepStatus::Done;
        rec.attempts = rec.attempts.max(1);
    }
}

fn fail(r: &mut RelayRecord, step: Step, attempts: u32, kind: ErrorKind, error: &str) {
    let rec = r.step_mut(step);
    rec.status = StepStatus::Failed;
    rec.attempts = attempts;
    rec.error = Some(error.into());
    rec.error_kind = Some(kind);
}

/// A chatmail relay commit of 40 `c`s.
fn commit(c: char) -> cmfleet::model::step::Commit {
    cmfleet::model::step::Commit::new(&c.to_string().repeat(40)).expect("commit")
}

/// Relays c1..c6: done in this run (two of them), DOWN, failed before cutover,
/// already done before the run, never started.
fn journal() -> JournalData {
    let mut relays = BTreeMap::new();

    let mut done = RelayRecord::new();
    finish_steps(&mut done, &Step::ALL);
    done.down_since_ms = at(100);
    done.up_again_ms = at(190);
    done.deployed.preconfigure = Some(commit('a'));
    done.deployed.activate = Some(commit('a'));
    relays.insert("c1.example.org".to_string(), done.clone());
    done.down_since_ms = at(200);
    done.up_again_ms = at(260);
    // The checkout moved between pre-staging and the cutover.
    done.deployed.activate = Some(commit('b'));
    relays.insert("c4.example.org".to_string(), done.clone());

    let mut down = RelayRecord::new();
    finish_steps(
        &mut down,
        &[
            Step::InitialSync,
            Step::Preconfigure,
            Step::DisableOld,
            Step::FinalSync,
        ],
    );
    fail(
        &mut down,
        Step::Dns,
        2,
        ErrorKind::Transient,
        "authoritative servers still serve 203.0.113.2 for c2.example.org after 10m (ns2.example.org)",
    );
    down.down_since_ms = at(120);
    down.deployed.preconfigure = Some(commit('a'));
    relays.insert("c2.example.org".to_string(), down);

    let mut before = RelayRecord::new();
    finish_steps(&mut before, &[Step::InitialSync]);
    fail(
        &mut before,
        Step::Preconfigure,
        1,
        ErrorKind::Permanent,
        "cmdeploy run exited with 1\nError: unsupported OS",
    );
    relays.insert("c3.example.org".to_string(), before);

    let mut earlier = RelayRecord::new();
    finish_steps(&mut earlier, &Step::ALL);
    earlier.down_since_ms = Some(T0 - 86_400 * SEC);
    earlier.up_again_ms = Some(T0 - 86_300 * SEC);
    relays.insert("c5.example.org".to_string(), earlier);

    JournalData {
        version: 1,
        inventory: "/srv/fleet/fleet.toml".into(),
        relays,
    }
}

const NAMES: [&str; 6] = [
    "c1.example.org",
    "c2.example.org",
    "c3.example.org",
    "c4.example.org",
    "c5.example.org",
    "c6.example.org",
];

fn ctx(state_dir: &Path) -> ReportContext {
    ReportContext {
        inventory: "fleet.toml".into(),
        relays: NAMES.iter().map(|s| s.to_string()).collect(),
        state_dir: state_dir.to_path_buf(),
        until_step: cmfleet::model::step::Step::Activate,
    }
}

fn stats() -> RunStats {
    RunStats {
        started_ms: T0,
        ended_ms: T0 + 600 * SEC,
        halted: Some("max_fail_percent (30%) reached: 2 of 4 finished relays failed".into()),
        interrupted: false,
        held: Vec::new(),
    }
}

fn last_lines() -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert(
        "c2.example.org".to_string(),
        vec![
            "ns1.example.org: 198.51.100.2".into(),
            "ns2.example.org: 203.0.113.2".into(),
        ],
    );
    m.insert(
        "c3.example.org".to_string(),
        vec!["Error: unsupported OS".into()],
    );
    m
}

fn summary() -> Summary {
    Summary::build(
        &ctx(Path::new("/var/lib/cmfleet")),
        &journal(),
        &stats(),
        &last_lines(),
    )
}

#[test]
fn final_report_lists_down_relays_first() {
    let s = summary();
    let text = render_text(&s, false);
    insta::assert_snapshot!(text);
    assert!(text.find("c2.example.org  DOWN").expect("c2") < text.find("✗ c3").expect("c3"));
    assert_eq!(s.exit_code(), cmfleet::model::exit::RELAYS_FAILED);
}

#[test]
fn down_relays_are_red_only_when_colour_is_on() {
    let s = summary();
    assert!(!render_text(&s, false).contains('\u{1b}'));
    assert!(render_text(&s, true).contains("\u{1b}[1;31m✗ c2.example.org  DOWN"));
}

#[test]
fn all_done_means_exit_zero_and_nothing_to_do() {
    let mut j = journal();
    let mut done = RelayRecord::new();
    finish_steps(&mut done, &Step::ALL);
    j.relays.insert("c2.example.org".into(), done.clone());
    let s = Summary::build(
        &ReportContext {
            inventory: "fleet.toml".into(),
            relays: vec!["c1.example.org".into(), "c2.example.org".into()],
            state_dir: "/var/lib/cmfleet".into(),
            until_step: cmfleet::model::step::Step::Activate,
        },
        &j,
        &RunStats {
            halted: None,
            ..stats()
        },
        &BTreeMap::new(),
    );
    assert_eq!(s.exit_code(), cmfleet::model::exit::OK);
    assert!(render_text(&s, false)
        .ends_with("what to do next: nothing: every selected relay is migrated.\n"));
}

#[test]
fn json_report_parses_and_matches_the_journal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("report.json");
    write_json_report(&path, &summary()).expect("write report");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    assert_eq!(v["version"], report::REPORT_VERSION);
    assert_eq!(v["cmfleet"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["cmfleet"]["commit"], cmfleet::model::version::COMMIT);
    assert_eq!(v["relays"][3]["deployed"]["activate"], "b".repeat(40));
    assert_eq!(v["wall_time_ms"], 600 * SEC);
    assert_eq!(v["counts"]["selected"], 6);
    assert_eq!(v["counts"]["succeeded"], 2);
    assert_eq!(v["counts"]["already_done"], 1);
    assert_eq!(v["counts"]["failed"], 2);
    assert_eq!(v["counts"]["not_started"], 1);
    assert_eq!(v["counts"]["down"], 1);
    assert_eq!(v["downtime"]["min_ms"], 60 * SEC);
    assert_eq!(v["downtime"]["median_ms"], 75 * SEC);
    assert_eq!(v["downtime"]["max_ms"], 90 * SEC);

    let journal = journal();
    let relays = v["relays"].as_array().expect("relays");
    assert_eq!(relays.len(), NAMES.len());
    for (r, name) in relays.iter().zip(NAMES) {
        assert_eq!(r["relay"], name);
        let rec = journal
            .relays
            .get(name)
            .cloned()
            .unwrap_or_else(RelayRecord::new);
        let state = serde_json::to_value(rec.state()).expect("state");
        assert_eq!(r["state"], state, "{name}");
        assert_eq!(
            r["down_since_ms"],
            serde_json::json!(rec.down_since_ms),
            "{name}"
        );
        assert_eq!(
            r["up_again_ms"],
            serde_json::json!(rec.up_again_ms),
            "{name}"
        );
        assert_eq!(
            r["deployed"],
            serde_json::to_value(&rec.deployed).expect("deployed"),
            "{name}"
        );
        match rec.failed_step() {
            Some(step) => {
                let s = rec.step(step);
                assert_eq!(r["step"], serde_json::to_value(step).expect("step"));
                assert_eq!(r["attempts"], s.attempts);
                assert_eq!(r["error"], serde_json::json!(s.error));
                assert_eq!(r["outcome"], "failed");
            }
            None => assert!(r["error"].is_null()),
        }
        assert_eq!(
            r["log"],
            format!("/var/lib/cmfleet/logs/{name}.log"),
            "{name}"
        );
    }
    assert_eq!(relays[1]["state"], "down");
    assert_eq!(relays[1]["downtime_ms"], 480 * SEC);
    assert_eq!(
        relays[1]["next"][1]["command"],
        "cmfleet rollback -i fleet.toml --limit c2.example.org"
    );
    assert_eq!(relays[4]["outcome"], "already-done");
    assert_eq!(relays[5]["outcome"], "not-started");
}

/// An inventory of c1..c6 in `dir`, as an operator would write it.
fn inventory(dir: &Path) -> Inventory {
    let mut toml =
        String::from("[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\nstate_dir = \"state\"\n");
    for i in 1..=6 {
        let d = dir.join(format!("c{i}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(
            d.join("chatmail.ini"),
            format!("mail_domain = c{i}.example.org\n"),
        )
        .expect("write ini");
        toml.push_str(&format!(
            "\n[[relay]]\nmail_domain = \"c{i}.example.org\"\nconfig = \"c{i}/chatmail.ini\"\n\
             old = {{ ssh = \"10.0.0.{i}\", ip4 = \"10.0.0.{i}\" }}\n\
             new = {{ ssh = \"10.0.1.{i}\", ip4 = \"10.0.1.{i}\" }}\n"
        ));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, toml).expect("write inventory");
    Inventory::load(&path).expect("valid inventory")
}

#[test]
fn failed_txt_round_trips_into_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inv = inventory(dir.path());
    let state_dir: PathBuf = inv.fleet.state_dir.clone();
    std::fs::create_dir_all(&state_dir).expect("state dir");

    // Through the reporter, as a run ends.
    let reporter = Reporter::with_writer(
        ProgressMode::Plain,
        ctx(&state_dir),
        Box::new(std::io::sink()),
    )
    .with_clock(ManualClock::new(T0));
    let finished = reporter.finish(&journal(), stats());
    assert!(finished.errors.is_empty(), "{:?}", finished.errors);
    let path = finished.failed_list.expect("failed.txt written");
    assert_eq!(path, state_dir.join("failed.txt"));

    let limit = format!("@{}", path.display());
    let chosen: Vec<&str> = inventory::select(&inv, Some(&limit))
        .expect("select")
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(chosen, ["c2.example.org", "c3.example.org"]);

    // Rewritten in place (atomically) by the next run: no temp files left behind.
    write_failed_list(&state_dir, &summary()).expect("rewrite");
    let litter: Vec<_> = std::fs::read_dir(&state_dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(litter.is_empty());
}

#[test]
fn status_table_shows_every_selected_relay() {
    let now = T0 + 600 * SEC;
    let table = status_table_at(&journal(), &NAMES, now);
    insta::assert_snapshot!(table);
}

#[test]
fn status_json_matches_the_journal() {
    let now = T0 + 600 * SEC;
    let text =
        status_json_at(&journal(), &["c2.example.org", "c6.example.org"], now).expect("json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(v["relays"].as_array().map(Vec::len), Some(2));
    let c2 = &v["relays"][0];
    assert_eq!(c2["relay"], "c2.example.org");
    assert_eq!(
        c2["state"],
        serde_json::to_value(RelayState::Down).expect("state")
    );
    assert_eq!(c2["step"], "dns");
    assert_eq!(c2["step_status"], "failed");
    assert_eq!(c2["attempts"], 2);
    assert_eq!(c2["downtime_ms"], 480 * SEC);
    assert_eq!(c2["deployed"]["preconfigure"], "a".repeat(40));
    assert!(c2["deployed"]["activate"].is_null());
    assert_eq!(v["relays"][1]["state"], "not-started");
    assert_eq!(v["cmfleet"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn held_back_relays_are_in_the_text_the_json_and_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = journal();
    let mut run = stats();
    run.halted = None;
    run.held = vec![(
        "c9.example.org".into(),
        "DOWN in the journal: use --from-step 4 or rollback".into(),
    )];
    let s = Summary::build(&ctx(dir.path()), &journal, &run, &BTreeMap::new());
    let text = render_text(&s, false);
    assert!(
        text.contains(
            "held back: c9.example.org: DOWN in the journal: use --from-step 4 or rollback"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["held"][0]["relay"], "c9.example.org");
    assert_eq!(s.exit_code(), cmfleet::model::exit::RELAYS_FAILED);
}
