//! Helpers of the `sluice` subcommands.

pub mod echo;
