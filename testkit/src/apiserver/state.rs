//! The objects, the resourceVersion counter and the event history of the stand-in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{Value, json};

/// Where an object lives: its resource path (`api/v1/pods`, `apis/danm.io/v1/danmnets`),
/// namespace (empty when cluster scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Resource path: API prefix and plural.
    pub resource: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A watch event.
#[derive(Clone, Debug)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// The resource path.
    pub resource: String,
    /// The namespace.
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before it, for DELETED).
    pub object: Value,
}

/// An API error, as the API server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP code.
    pub code: u16,
    /// Status reason (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The Status object of the error.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// What the stand-in holds.
#[derive(Debug)]
pub struct State {
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    /// Owner uid -> the objects whose ownerReferences name it (for cascading deletes).
    dependents: HashMap<String, BTreeSet<ObjectKey>>,
    history: VecDeque<Event>,
    history_limit: usize,
    /// Events older than this resourceVersion are forgotten (410 Gone).
    compacted_before: u64,
    uid_counter: u64,
}

fn resource_label(key: &ObjectKey) -> String {
    // "apis/danm.io/v1/danmnets" -> "danmnets.danm.io"; "api/v1/pods" -> "pods".
    let parts: Vec<&str> = key.resource.split('/').collect();
    match parts.as_slice() {
        ["apis", group, _, plural] => format!("{plural}.{group}"),
        [.., plural] => (*plural).to_owned(),
        [] => String::new(),
    }
}

fn rv_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl State {
    /// An empty store keeping `history_limit` events for watches to resume from.
    pub fn new(history_limit: usize) -> State {
        State {
            rv: 1,
            objects: BTreeMap::new(),
            dependents: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted_before: 0,
            uid_counter: 0,
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can resume from.
    pub fn oldest_resumable(&self) -> u64 {
        self.compacted_before
    }

    /// Forgets every event up to now: a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_before = self.rv;
    }

    fn record(&mut self, key: &ObjectKey, kind: &'static str, object: Value) -> Event {
        let event = Event {
            rv: self.rv,
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            kind,
            object,
        };
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_before = old.rv;
            }
        }
        event
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Result<Value, ApiError> {
        self.objects.get(key).cloned().ok_or_else(|| not_found(key))
    }

    /// Objects of a resource (one namespace, or all when `namespace` is None).
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        self.list_where(resource, namespace, |_| true)
    }

    /// Objects of a resource that `keep` accepts (tested before anything is copied).
    pub fn list_where(
        &self,
        resource: &str,
        namespace: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        // Keys sort by resource, then namespace: read only the matching range.
        let from = ObjectKey {
            resource: resource.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: String::new(),
        };
        self.objects
            .range(from..)
            .take_while(|(k, _)| {
                k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .filter(|(_, v)| keep(v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores an object, keeping the ownerReferences index current.
    fn store(&mut self, key: &ObjectKey, object: Value) {
        self.unstore(key);
        for uid in owner_uids(&object) {
            self.dependents.entry(uid).or_default().insert(key.clone());
        }
        self.objects.insert(key.clone(), object);
    }

    /// Removes an object and its entries in the ownerReferences index.
    fn unstore(&mut self, key: &ObjectKey) -> Option<Value> {
        let object = self.objects.remove(key)?;
        for uid in owner_uids(&object) {
            if let Some(set) = self.dependents.get_mut(&uid) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(&uid);
                }
            }
        }
        Some(object)
    }

    /// Events after `since` (for a watch), or None when they are no longer retained.
    pub fn events_since(&self, since: u64) -> Option<Vec<Event>> {
        if since < self.compacted_before {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|e| e.rv > since)
                .cloned()
                .collect(),
        )
    }

    /// Creates an object; fills uid, resourceVersion, creationTimestamp, generation.
    pub fn create(
        &mut self,
        key: &ObjectKey,
        mut object: Value,
    ) -> Result<(Value, Event), ApiError> {
        if self.objects.contains_key(key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", resource_label(key), key.name),
            ));
        }
        self.uid_counter += 1;
        let rv = self.next_rv();
        let meta = object
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "BadRequest", "the object is not a JSON object"))?
            .entry("metadata")
            .or_insert_with(|| json!({}));
        meta["name"] = json!(key.name);
        if !key.namespace.is_empty() {
            meta["namespace"] = json!(key.namespace);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid_counter));
        meta["resourceVersion"] = json!(rv.to_string());
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!(timestamp());
        self.store(key, object.clone());
        let event = self.record(key, "ADDED", object.clone());
        Ok((object, event))
    }

    /// Replaces an object; a non-empty `metadata.resourceVersion` must be the current one.
    pub fn replace(
        &mut self,
        key: &ObjectKey,
        mut object: Value,
    ) -> Result<(Value, Event), ApiError> {
        let current = self.get(key)?;
        if let Some(rv) = rv_of(&object)
            && Some(rv) != rv_of(&current)
        {
            return Err(conflict(key));
        }
        let rv = self.next_rv();
        let spec_changed = current.get("spec") != object.get("spec");
        let meta = object
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "BadRequest", "the object is not a JSON object"))?
            .entry("metadata")
            .or_insert_with(|| json!({}));
        for field in ["uid", "creationTimestamp", "namespace", "name"] {
            if let Some(v) = current.pointer(&format!("/metadata/{field}")) {
                meta[field] = v.clone();
            }
        }
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta["generation"] = json!(if spec_changed {
            generation + 1
        } else {
            generation
        });
        meta["resourceVersion"] = json!(rv.to_string());
        self.store(key, object.clone());
        let event = self.record(key, "MODIFIED", object.clone());
        Ok((object, event))
    }

    /// Deletes an object (if `precondition_rv` is given it must be current) and, as the
    /// garbage collector does, every object whose `ownerReferences` name it.
    pub fn delete(
        &mut self,
        key: &ObjectKey,
        precondition_rv: Option<&str>,
    ) -> Result<(Value, Vec<Event>), ApiError> {
        let current = self.get(key)?;
        if let Some(rv) = precondition_rv
            && Some(rv) != rv_of(&current)
        {
            return Err(conflict(key));
        }
        let mut events = Vec::new();
        let mut doomed = vec![key.clone()];
        while let Some(k) = doomed.pop() {
            let Some(object) = self.unstore(&k) else {
                continue;
            };
            let uid = object.pointer("/metadata/uid").cloned();
            self.next_rv();
            let mut gone = object;
            gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            events.push(self.record(&k, "DELETED", gone));
            if let Some(dependents) = uid
                .as_ref()
                .and_then(Value::as_str)
                .and_then(|uid| self.dependents.get(uid))
            {
                doomed.extend(dependents.iter().cloned());
            }
        }
        Ok((current, events))
    }
}

fn not_found(key: &ObjectKey) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{}\" not found", resource_label(key), key.name),
    )
}

fn conflict(key: &ObjectKey) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            resource_label(key),
            key.name
        ),
    )
}

fn timestamp() -> String {
    // RFC 3339 in UTC, computed without a date crate.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The uids an object's ownerReferences name.
fn owner_uids(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
