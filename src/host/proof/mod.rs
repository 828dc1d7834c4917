//! The copy proof of step 4: before DNS moves, NEW must hold what OLD holds.
//!
//! Each host sends a complete, self-vouching listing ([`listing`]), its digest
//! first: equal digests prove the copy, different ones bring both listings, merged
//! as they arrive to name each difference ([`compare`]). An incomplete listing is an [`Incomplete`]
//! error (retried: the copy may well be right), never a difference and never a
//! pass. What is compared, and what is not and why, is in `compare` and in
//! docs/how-it-works.md.

mod compare;
mod cutover;
mod early;
mod listing;
mod prune;
mod read;
mod remove;

pub use compare::{compare, Differences};
pub use cutover::{
    cutover_path, Cutover, CutoverError, Discard, Entry, Keep, Mailbox, Queued, Reader, Uids,
    Writer,
};
pub use early::{early_prune, record_paths, PRUNED};
pub use listing::{listing, pruning_listing, settle_new, verify_listing, Role, QUEUES, SPOOL};
pub use prune::{Handoff, NEW_PATHS};
pub use read::{Digest, Incomplete, Listing, Owners, Record, Side};

#[cfg(test)]
mod tests;
