//! Helpers of the `sluice` subcommands.

pub mod echo;
pub mod signals;
