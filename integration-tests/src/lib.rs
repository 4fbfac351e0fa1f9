//! Test harness shared by the black-box tests.
pub mod pg;
