//! Exit codes, in one place (documented in README.md).

/// Every selected relay is done (or the command succeeded).
pub const OK: i32 = 0;
/// Usage, inventory or setup error: nothing was changed.
pub const USAGE: i32 = 1;
/// Some relays failed; see the report.
pub const RELAYS_FAILED: i32 = 2;
/// The journal could not be saved during a migration: new work was stopped, relays
/// inside their cutover finished, and the report shown is from memory (the journal
/// on disk may be behind it). Not 1: things were changed.
pub const JOURNAL_UNSAVED: i32 = 3;
/// Interrupted (Ctrl-C); the journal says where each relay stands.
pub const INTERRUPTED: i32 = 130;
