//! Names from the host shown to people: the escaping lives in the output
//! shell ([`crate::shell::clean`], [`crate::shell::Shown`]).

pub use crate::shell::{clean, Shown};
