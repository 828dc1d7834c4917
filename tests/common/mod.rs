//! Shared test support: the lab harness (real sshd hosts) and a real BIND server.
#![allow(dead_code)]

pub mod bind;
pub mod dc_night;
pub mod deltachat;
pub mod lab;
pub mod real;
pub mod real_guide;
pub mod run;
