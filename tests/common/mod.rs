//! The support kit of `tests/it/`, for the test binaries outside it (the
//! end-to-end suite).
#![allow(unused_imports)]

#[path = "../it/support/mod.rs"]
mod kit;

pub use kit::*;
