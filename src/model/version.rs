//! Which cmfleet this is: the package version and the git commit it was built from
//! (build.rs; "unknown" outside a git checkout). `--version` prints both, and the
//! JSON report and `status --format json` carry them, so that a night's record says
//! which cmfleet ran it.

use serde::Serialize;

/// The package version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The build's git commit, 12 hex digits, or "unknown".
pub const COMMIT: &str = env!("CMFLEET_BUILD_COMMIT");
/// What `cmfleet --version` prints after the program's name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CMFLEET_BUILD_COMMIT"),
    ")"
);

/// A cmfleet build, as the reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Build {
    pub version: &'static str,
    pub commit: &'static str,
}

/// This build.
pub const THIS: Build = Build {
    version: VERSION,
    commit: COMMIT,
};
