//! faspex-gate: a policy-enforcing authentication gateway for IBM Aspera Faspex.
#![forbid(unsafe_code)]

pub mod config;
pub mod faspex;
