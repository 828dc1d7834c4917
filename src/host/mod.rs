//! What cmfleet does on a relay's hosts, below the pipeline: ssh (`remote`), the
//! catalogue of every command run there, the copy proof, and host inspection
//! (facts, findings, the preflights).

pub mod catalogue;
pub mod identity;
pub mod inspect;
pub mod proof;
pub mod remote;
