//! The basic types every layer speaks: the six steps and how a step fails, exit
//! codes, the checked inventory, and the events executors send.

pub mod events;
pub mod exit;
pub mod inventory;
pub mod step;
