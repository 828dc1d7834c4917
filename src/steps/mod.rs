//! The six steps of the guide, what each runs, and their executors.

pub mod commands;
pub mod dns;
pub mod exec;
pub mod proof;

pub use crate::step::Step;
