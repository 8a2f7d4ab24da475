//! Names of objects by a key (a namespace, or a namespace and a network), kept in step with
//! a reflector's store, which has no index of its own: the Services of one namespace and
//! the DanmEps of one network are found without a scan of the cluster.
//!
//! Fed by the watcher's events on their way to the reflector, so it follows the store one
//! event ahead, never behind: an object seen or changed is named under its key (under its
//! new key only, when the key changed; objects without a key are not named), a deleted one
//! is forgotten, and a relist is gathered apart and swapped in when it is complete (as the
//! store does), so a read during a relist still sees the names of before. Readers look each
//! name up in the store, which holds the objects themselves, and skip a name it does not
//! hold yet (its event, once the store has it, triggers them again).

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

use kube::runtime::watcher::Event;

/// The names, by key.
#[derive(Debug)]
pub struct Names<Key> {
    state: Mutex<State<Key>>,
}

#[derive(Debug)]
struct State<Key> {
    current: Index<Key>,
    /// A relist under way.
    relist: Option<Index<Key>>,
}

#[derive(Debug)]
struct Index<Key> {
    by_key: HashMap<Key, BTreeSet<String>>,
    /// Each object's key (to move it when its key changes).
    key_of: HashMap<(String, String), Key>,
}

impl<Key> Default for Index<Key> {
    fn default() -> Self {
        Index {
            by_key: HashMap::new(),
            key_of: HashMap::new(),
        }
    }
}

impl<Key> Default for Names<Key> {
    fn default() -> Self {
        Names {
            state: Mutex::new(State {
                current: Index::default(),
                relist: None,
            }),
        }
    }
}

impl<Key: Clone + Eq + Hash> Names<Key> {
    /// Follows one event of the reflector: `at` gives an object's namespace and name, and
    /// `key` its key (None: not indexed).
    pub fn follow<K>(
        &self,
        event: &Event<K>,
        at: impl Fn(&K) -> (String, String),
        key: impl Fn(&K) -> Option<Key>,
    ) {
        // The caller's functions run before the lock is taken.
        let named = match event {
            Event::Apply(object) | Event::InitApply(object) => Some((at(object), key(object))),
            Event::Delete(object) => Some((at(object), None)),
            Event::Init | Event::InitDone => None,
        };
        let mut state = self.state.lock().expect("the names lock");
        match (event, named) {
            (Event::Apply(_) | Event::Delete(_), Some((at, key))) => state.current.name(at, key),
            (Event::Init, _) => state.relist = Some(Index::default()),
            (Event::InitApply(_), Some((at, key))) => {
                if let Some(relist) = state.relist.as_mut() {
                    relist.name(at, key);
                }
            }
            (Event::InitDone, _) => {
                if let Some(relist) = state.relist.take() {
                    state.current = relist;
                }
            }
            _ => {}
        }
    }

    /// The names under `key`.
    pub fn get(&self, key: &Key) -> Vec<String> {
        let state = self.state.lock().expect("the names lock");
        state
            .current
            .by_key
            .get(key)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl<Key: Clone + Eq + Hash> Index<Key> {
    /// Names object `at` under `key` (None: under none), forgetting it under its earlier
    /// key.
    fn name(&mut self, at: (String, String), key: Option<Key>) {
        if let Some(old) = self.key_of.remove(&at)
            && let Some(names) = self.by_key.get_mut(&old)
        {
            names.remove(&at.1);
            if names.is_empty() {
                self.by_key.remove(&old);
            }
        }
        if let Some(key) = key {
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(at.1.clone());
            self.key_of.insert(at, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Object = (&'static str, &'static str, &'static str);

    fn follow(names: &Names<String>, event: Event<Object>) {
        names.follow(
            &event,
            |(ns, name, _)| ((*ns).to_owned(), (*name).to_owned()),
            |(ns, _, network)| (!network.is_empty()).then(|| format!("{ns}/{network}")),
        );
    }

    #[test]
    fn names_follow_applies_moves_deletes_and_whole_relists() {
        let names = Names::default();
        follow(&names, Event::Apply(("a", "ep1", "signal")));
        follow(&names, Event::Apply(("a", "ep2", "signal")));
        follow(&names, Event::Apply(("b", "ep1", "signal")));
        assert_eq!(names.get(&"a/signal".to_owned()), ["ep1", "ep2"]);
        // Moved to another key: named under the new one only.
        follow(&names, Event::Apply(("a", "ep2", "media")));
        assert_eq!(names.get(&"a/signal".to_owned()), ["ep1"]);
        assert_eq!(names.get(&"a/media".to_owned()), ["ep2"]);
        // Not indexed any more; deleted.
        follow(&names, Event::Apply(("a", "ep2", "")));
        follow(&names, Event::Delete(("a", "ep1", "signal")));
        assert!(names.get(&"a/signal".to_owned()).is_empty());
        assert!(names.get(&"a/media".to_owned()).is_empty());
        // A relist: the names of before until it is complete, then exactly the list's.
        follow(&names, Event::Init);
        follow(&names, Event::InitApply(("a", "ep3", "signal")));
        assert!(names.get(&"a/signal".to_owned()).is_empty());
        assert_eq!(names.get(&"b/signal".to_owned()), ["ep1"]);
        follow(&names, Event::InitDone);
        assert_eq!(names.get(&"a/signal".to_owned()), ["ep3"]);
        assert!(
            names.get(&"b/signal".to_owned()).is_empty(),
            "gone during the relist"
        );
        follow(&names, Event::Delete(("a", "ep3", "signal")));
        assert!(names.get(&"a/signal".to_owned()).is_empty());
    }
}
