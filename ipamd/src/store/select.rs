//! Choosing a store from its command-line form (`--store memory|file:PATH|kube`).

use std::path::Path;
use std::sync::Arc;

use super::Store;
use super::file::{FileError, FileStore};
use super::kube::KubeStore;
use super::memory::MemoryStore;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `--store` names no store.
    #[error("--store {0:?} is not one of: memory, file:PATH, kube")]
    UnknownStore(String),
    /// `--store kube` without a usable Kubernetes client configuration.
    #[error("--store kube: {0}")]
    NoKubeConfig(danm_runtime::RuntimeError),
    /// The store file cannot be opened.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Opens a store from its command-line form: `memory`, `file:PATH` or `kube` (with
/// `kubeconfig`, else `$KUBECONFIG` or `~/.kube/config`, else the in-cluster configuration);
/// `namespace` is ipamd's own.
pub async fn open(
    spec: &str,
    namespace: &str,
    kubeconfig: Option<&Path>,
) -> Result<Arc<dyn Store>, OpenError> {
    check(spec)?;
    match spec.split_once(':') {
        _ if spec == "memory" => Ok(Arc::new(MemoryStore::new())),
        _ if spec == "kube" => {
            let client = danm_runtime::kube_client(kubeconfig)
                .await
                .map_err(OpenError::NoKubeConfig)?;
            Ok(Arc::new(KubeStore::new(client, namespace).await))
        }
        Some(("file", path)) if !path.is_empty() => Ok(Arc::new(FileStore::open(path)?)),
        _ => Err(OpenError::UnknownStore(spec.to_owned())),
    }
}

/// Whether `spec` names a store at all (a mistake no retry can fix).
pub fn check(spec: &str) -> Result<(), OpenError> {
    match spec.split_once(':') {
        _ if spec == "memory" || spec == "kube" => Ok(()),
        Some(("file", path)) if !path.is_empty() => Ok(()),
        _ => Err(OpenError::UnknownStore(spec.to_owned())),
    }
}
