//! User commands beside the pipeline: `check` (is each relay ready?), `verify` (is
//! each relay served by NEW, as a mail client sees it?), `rollback`.

pub mod check;
pub mod rollback;
pub mod verify;
