//! Progressive rollouts: a route's canary weight stepped up on the canary's own live
//! figures, and rolled back when they fail. [`store`] is where state lives and how
//! replicas agree.

pub mod store;
