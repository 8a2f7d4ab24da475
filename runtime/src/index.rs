//! A watch-fed index: every object of a kind followed with kube-runtime's watcher (a full
//! list at start and after a 410, then events, with backoff on errors), its changes handed
//! to the index's own code as [`Change`]s: a relist as one [`Change::Relisted`] with every
//! object (the index replaces what it held of that kind), then each object applied or
//! deleted. [`Synced`] says when every kind an index follows has been listed once, so that
//! "nothing found" can be trusted.

use std::fmt::Debug;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// One change of a followed kind.
#[derive(Debug)]
pub enum Change<K> {
    /// A fresh list: every object of the kind, replacing what the index held of it.
    Relisted(Vec<K>),
    /// An object created or changed.
    Applied(K),
    /// An object deleted.
    Deleted(K),
}

/// Whether every kind an index follows has been listed at least once.
#[derive(Debug)]
pub struct Synced {
    listed: watch::Sender<usize>,
    kinds: usize,
}

impl Synced {
    /// For an index that follows `kinds` kinds.
    pub fn new(kinds: usize) -> Synced {
        Synced {
            listed: watch::channel(0).0,
            kinds,
        }
    }

    /// Whether each kind has been listed.
    pub fn is_synced(&self) -> bool {
        *self.listed.borrow() >= self.kinds
    }

    /// Completes once each kind has been listed.
    pub async fn listed(&self) {
        let mut listed = self.listed.subscribe();
        // The sender is `self`, alive while this borrows it: no error.
        let _ = listed.wait_for(|n| *n >= self.kinds).await;
    }

    fn listed_once(&self) {
        self.listed.send_modify(|n| *n += 1);
    }
}

/// Follows every object of `api` until the returned task is aborted (or the runtime ends),
/// handing each change to `apply`, and counts the kind as listed in `synced` after its
/// first list (once `apply` has taken it). `kind` names it in the logs.
pub fn follow<K>(
    api: Api<K>,
    kind: &'static str,
    synced: std::sync::Arc<Synced>,
    apply: impl FnMut(Change<K>) + Send + 'static,
) -> tokio::task::AbortHandle
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    follow_map(api, kind, synced, |object| object, apply)
}

/// As [`follow`], with every object turned by `convert` into what the index keeps as soon
/// as it arrives: a relist then buffers only the converted values, never every object of
/// the kind in full.
pub fn follow_map<K, V>(
    api: Api<K>,
    kind: &'static str,
    synced: std::sync::Arc<Synced>,
    convert: impl Fn(K) -> V + Send + 'static,
    mut apply: impl FnMut(Change<V>) + Send + 'static,
) -> tokio::task::AbortHandle
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
    V: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut relist: Option<Vec<V>> = None;
        let mut first = true;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => relist = Some(Vec::new()),
                Ok(watcher::Event::InitApply(object)) => {
                    if let Some(buffer) = relist.as_mut() {
                        buffer.push(convert(object));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(buffer) = relist.take() {
                        let count = buffer.len();
                        apply(Change::Relisted(buffer));
                        tracing::info!(kind, count, "index listed every object");
                        if std::mem::take(&mut first) {
                            synced.listed_once();
                        }
                    }
                }
                Ok(watcher::Event::Apply(object)) => apply(Change::Applied(convert(object))),
                Ok(watcher::Event::Delete(object)) => apply(Change::Deleted(convert(object))),
                Err(e) => tracing::warn!(kind, error = %e, "watch failed, retrying"),
            }
        }
    })
    .abort_handle()
}
