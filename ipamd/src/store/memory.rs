//! The in-memory backend (`--store memory`), for tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::kv::{Expect, KvBackend, KvError, KvStore, Table, check_expect};

/// The in-memory tables.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    last_version: u64,
    rows: BTreeMap<(Table, String), (u64, Vec<u8>)>,
}

/// The in-memory store.
pub type MemoryStore = KvStore<MemoryBackend>;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        KvStore::with_backend(MemoryBackend::default())
    }

    /// Everything the store holds, bytes and versions, to compare two moments (the tests
    /// that prove a refused request changes nothing).
    pub fn snapshot(&self) -> MemorySnapshot {
        let state = self.backend().state.lock().expect("memory store lock");
        MemorySnapshot {
            last_version: state.last_version,
            rows: state
                .rows
                .iter()
                .map(|((table, key), (version, bytes))| {
                    (format!("{table:?}"), key.clone(), *version, bytes.clone())
                })
                .collect(),
        }
    }
}

/// What a memory store holds at one moment; see [`MemoryStore::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// The version counter.
    pub last_version: u64,
    /// Every row: table, key, version, bytes.
    pub rows: Vec<(String, String, u64, Vec<u8>)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl KvBackend for MemoryBackend {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<(u64, Vec<u8>)>, KvError> {
        let state = self.state.lock().expect("memory store lock");
        Ok(state.rows.get(&(table, key.to_owned())).cloned())
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, u64, Vec<u8>)>, KvError> {
        let state = self.state.lock().expect("memory store lock");
        Ok(state
            .rows
            .range((table, prefix.to_owned())..)
            .take_while(|((t, k), _)| *t == table && k.starts_with(prefix))
            .map(|((_, k), (v, bytes))| (k.clone(), *v, bytes.clone()))
            .collect())
    }

    fn write(
        &self,
        table: Table,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<u64, KvError> {
        let mut state = self.state.lock().expect("memory store lock");
        let row = (table, key.to_owned());
        check_expect(state.rows.get(&row).map(|(v, _)| *v), expect)?;
        state.last_version += 1;
        let version = state.last_version;
        match value {
            Some(bytes) => {
                state.rows.insert(row, (version, bytes));
            }
            None => {
                state.rows.remove(&row);
            }
        }
        Ok(version)
    }

    fn delete_prefix(&self, table: Table, prefix: &str) -> Result<(), KvError> {
        let mut state = self.state.lock().expect("memory store lock");
        state
            .rows
            .retain(|(t, k), _| !(*t == table && k.starts_with(prefix)));
        Ok(())
    }
}
