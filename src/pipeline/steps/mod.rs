//! The six steps of the guide and their executor. What each runs is in
//! `catalogue`; the copy proof of step 4 in `proof`.

pub mod dns;
pub mod exec;

use crate::model::step::Step;
