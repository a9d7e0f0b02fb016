//! Typed per-request notes ([`Notes`]): the slot in [`crate::FilterCtx`] where each
//! filter kind keeps values of its own types between its phases, or leaves them for
//! later filters of its family (what authentication decided, a credential to strip, the
//! mirror copies waiting for the body), and where the gateway leaves kind-neutral
//! values (the trace context, the client certificate).

use std::any::{Any, TypeId};

/// One value per type, for one request. Empty and unallocated until the first insert;
/// the few values a request carries are found by a scan of their type ids, which costs
/// less than hashing them. Replacing a value allocates nothing.
#[derive(Default)]
pub struct Notes(Vec<(TypeId, Box<dyn Any + Send + Sync>)>);

impl std::fmt::Debug for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notes").field("count", &self.0.len()).finish()
    }
}

impl Notes {
    /// Sets the value of type `T`, returning the one it replaces.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        if let Some(v) = self.get_mut::<T>() {
            return Some(std::mem::replace(v, value));
        }
        if self.0.capacity() == 0 {
            self.0.reserve_exact(4);
        }
        self.0.push((TypeId::of::<T>(), Box::new(value)));
        None
    }

    /// The value of type `T`, if one was set.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.0
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_ref::<T>())
    }

    /// The value of type `T`, mutably, if one was set.
    pub fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.0
            .iter_mut()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_mut::<T>())
    }

    /// Takes the value of type `T` out, if one was set.
    pub fn remove<T: 'static>(&mut self) -> Option<T> {
        let id = TypeId::of::<T>();
        let at = self.0.iter().position(|(t, _)| *t == id)?;
        let (_, v) = self.0.swap_remove(at);
        v.downcast::<T>().ok().map(|b| *b)
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug, PartialEq)]
    struct A(u32);
    #[derive(Debug, PartialEq)]
    struct B(&'static str);

    #[test]
    fn one_value_per_type() {
        let mut n = Notes::default();
        assert!(n.is_empty() && n.get::<A>().is_none());
        assert_eq!(n.insert(A(1)), None);
        assert_eq!(n.insert(B("b")), None);
        assert_eq!(n.insert(A(2)), Some(A(1)));
        assert_eq!(n.get::<A>(), Some(&A(2)));
        n.get_mut::<B>().unwrap().0 = "c";
        assert_eq!(n.remove::<B>(), Some(B("c")));
        assert_eq!(n.get::<B>(), None);
        assert_eq!(n.get::<A>(), Some(&A(2)));
    }

    #[test]
    fn values_drop_with_the_notes() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let mut n = Notes::default();
        n.insert(Counted(drops.clone()));
        drop(n);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }
}
