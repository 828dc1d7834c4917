//! The real-chatmail lab's checkout: a clone of the shared relay bundle with the lab's
//! overlay commit.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cmfleet::lab::real::chatmail::{prepare_checkout, RelaySource};
use cmfleet::lab::LabError;

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, fails the test unless it succeeds, returns its stdout.
fn stdout(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    stdout(Command::new("git").current_dir(dir).args(args))
}

/// The overlay is chosen by what applies: 1.12.0 has its own (`download_executable`),
/// 1.10.0 takes none and says so; a checkout is reused only for the same ref.
#[test]
fn each_version_gets_the_overlay_that_applies_or_a_clear_error() {
    let dir = tempfile::Builder::new()
        .prefix("cmfleet-real-chatmail-refs-")
        .tempdir()
        .unwrap();
    let bundle = RelaySource::shared_default().unwrap().repo;
    let source = |r: &str| RelaySource::new(&bundle, r).unwrap();

    let lab = dir.path().join("a");
    let overlay = prepare_checkout(&lab, &source("1.12.0")).unwrap();
    assert_eq!(overlay.name, "chatmail-1.12.0-lab.patch");
    let checkout = lab.join("relay");
    assert_eq!(git(&checkout, &["status", "--porcelain"]), "");
    let changed = git(&checkout, &["diff", "--name-only", "HEAD^", "HEAD"]);
    assert_eq!(changed.lines().collect::<Vec<_>>(), overlay.files);
    // Prepared again: the same checkout, kept as it is.
    let head = git(&checkout, &["rev-parse", "HEAD"]);
    assert_eq!(prepare_checkout(&lab, &source("1.12.0")).unwrap(), overlay);
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), head);
    // Asked for another version: refused, not replaced.
    let err = prepare_checkout(&lab, &source("1.9.0")).unwrap_err();
    assert!(matches!(err, LabError::CheckoutMismatch { .. }), "{err}");
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), head);

    let lab = dir.path().join("b");
    let err = prepare_checkout(&lab, &source("1.10.0")).unwrap_err();
    assert!(matches!(err, LabError::NoOverlay { .. }), "{err}");
    assert!(err.to_string().contains("1.10.0"), "{err}");
    let err = prepare_checkout(&lab, &source("9.9.9")).unwrap_err();
    assert!(matches!(err, LabError::UnknownRef { .. }), "{err}");
    // Nothing half-made stays behind.
    assert_eq!(fs::read_dir(&lab).unwrap().count(), 0);
}
