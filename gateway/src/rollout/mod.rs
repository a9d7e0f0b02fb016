//! Progressive rollouts: a route's canary weight stepped up on the canary's own live
//! figures, and rolled back when they fail. [`store`] is where state lives and how
//! replicas agree; [`etcd_store`] is the store of replicas sharing etcd.

pub mod etcd_store;
pub mod store;
