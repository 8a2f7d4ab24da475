//! The embedded backend (`--store file:PATH`): one redb database file, every write its own
//! durable (fsynced) transaction.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::kv::{Expect, KvBackend, KvError, KvStore, Table, check_expect};

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("shards");
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_VERSION: &str = "last_version";

fn table(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        Table::Networks => NETWORKS,
        Table::Shards => SHARDS,
        Table::Endpoints => ENDPOINTS,
    }
}

fn backend_err(e: impl std::fmt::Display) -> KvError {
    KvError::Backend(e.to_string())
}

/// Value layout: version (u64 LE) followed by the record bytes.
fn split(raw: &[u8]) -> Result<(u64, Vec<u8>), KvError> {
    if raw.len() < 8 {
        return Err(KvError::Backend(
            "stored value shorter than its version".into(),
        ));
    }
    let (v, rest) = raw.split_at(8);
    Ok((
        u64::from_le_bytes(v.try_into().expect("8 bytes")),
        rest.to_vec(),
    ))
}

/// The redb tables.
#[derive(Debug)]
pub struct FileBackend {
    path: PathBuf,
    db: Database,
}

/// The embedded file store.
pub type FileStore = KvStore<FileBackend>;

/// Why the store file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Its folder could not be created.
    #[error("cannot create the folder of store file {path}")]
    Folder {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// redb could not open or initialize it.
    #[error("cannot open store file {path}")]
    Database {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: redb::Error,
    },
}

impl FileStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStore, FileError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| FileError::Folder {
                path: shown.clone(),
                source,
            })?;
        }
        let database = |source: redb::Error| FileError::Database {
            path: shown.clone(),
            source,
        };
        let db = Database::create(&path).map_err(|e| database(e.into()))?;
        let txn = db.begin_write().map_err(|e| database(e.into()))?;
        for t in [NETWORKS, SHARDS, ENDPOINTS] {
            txn.open_table(t).map_err(|e| database(e.into()))?;
        }
        txn.open_table(META).map_err(|e| database(e.into()))?;
        txn.commit().map_err(|e| database(e.into()))?;
        Ok(KvStore::with_backend(FileBackend { path, db }))
    }
}

impl KvBackend for FileBackend {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn get(&self, t: Table, key: &str) -> Result<Option<(u64, Vec<u8>)>, KvError> {
        let txn = self.db.begin_read().map_err(backend_err)?;
        let tbl = txn.open_table(table(t)).map_err(backend_err)?;
        tbl.get(key)
            .map_err(backend_err)?
            .map(|v| split(v.value()))
            .transpose()
    }

    fn scan(&self, t: Table, prefix: &str) -> Result<Vec<(String, u64, Vec<u8>)>, KvError> {
        let txn = self.db.begin_read().map_err(backend_err)?;
        let tbl = txn.open_table(table(t)).map_err(backend_err)?;
        let mut out = Vec::new();
        for row in tbl.range(prefix..).map_err(backend_err)? {
            let (k, v) = row.map_err(backend_err)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (version, bytes) = split(v.value())?;
            out.push((key.to_owned(), version, bytes));
        }
        Ok(out)
    }

    fn write(
        &self,
        t: Table,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<u64, KvError> {
        let txn = self.db.begin_write().map_err(backend_err)?;
        let version = {
            let mut tbl = txn.open_table(table(t)).map_err(backend_err)?;
            let current = tbl
                .get(key)
                .map_err(backend_err)?
                .map(|v| split(v.value()).map(|(ver, _)| ver))
                .transpose()?;
            check_expect(current, expect)?;
            let mut meta = txn.open_table(META).map_err(backend_err)?;
            let version = meta
                .get(LAST_VERSION)
                .map_err(backend_err)?
                .map_or(0, |v| v.value())
                + 1;
            meta.insert(LAST_VERSION, version).map_err(backend_err)?;
            match value {
                Some(bytes) => {
                    let mut raw = version.to_le_bytes().to_vec();
                    raw.extend_from_slice(&bytes);
                    tbl.insert(key, raw.as_slice()).map_err(backend_err)?;
                }
                None => {
                    tbl.remove(key).map_err(backend_err)?;
                }
            }
            version
        };
        txn.commit().map_err(backend_err)?;
        Ok(version)
    }

    fn delete_prefix(&self, t: Table, prefix: &str) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(backend_err)?;
        {
            let mut tbl = txn.open_table(table(t)).map_err(backend_err)?;
            tbl.retain(|k, _| !k.starts_with(prefix))
                .map_err(backend_err)?;
        }
        txn.commit().map_err(backend_err)?;
        Ok(())
    }
}
