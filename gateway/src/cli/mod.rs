//! Helpers of the `sluice` subcommands.

pub mod cache;
pub mod echo;
pub mod signals;
