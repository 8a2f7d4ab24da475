//! NetworkAttachmentDefinitions (Multus' kind) whose configuration asks for a host link,
//! read as DANM's netwatcher read them: the plugin's `master` is the host device, its
//! `vlan` and `vxlan` the ids, and the configuration's `name` takes the place of a
//! NetworkID (`<name>.<vlan>`, `vx_<name>`). Unlike DANM, a plugin list (`plugins`) is read
//! too, when exactly one of its plugins asks for a link.
//!
//! For Multus' pods to use the link, `master` must name it: netwatcher rewrites it (the
//! VxLAN link when both are asked, as DANM did) and keeps the device it named in the
//! annotation [`ORIGINAL_MASTER`] and the link it wrote in [`REWRITTEN_MASTER`]: while
//! `master` is that link (or one of the links the configuration asks for), the device is
//! the annotation's, so the links are kept after the rewrite and follow a change of id or
//! name; a `master` the owner wrote is the device.
//!
//! Every string here comes from an object anyone allowed to write NetworkAttachmentDefinitions
//! wrote: the name and the device become link names only as plain names
//! ([`crate::names::plain`]) of at most [`super::MAX_NAME`] bytes.

use serde_json::Value;

use super::{LinkProblem, LinkSpec, MAX_NAME, links_of};

/// The annotation in which netwatcher keeps the device `master` named before it rewrote
/// `master` to the link it made.
pub const ORIGINAL_MASTER: &str = "danm.io/original-master";

/// The annotation in which netwatcher keeps the link it wrote into `master`.
pub const REWRITTEN_MASTER: &str = "danm.io/rewritten-master";

/// The two annotations netwatcher writes, as read from the object.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written<'a> {
    /// [`ORIGINAL_MASTER`].
    pub original: Option<&'a str>,
    /// [`REWRITTEN_MASTER`].
    pub rewritten: Option<&'a str>,
}

/// The host links one NetworkAttachmentDefinition asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentLinks {
    /// `(name, spec)` of each link.
    pub links: Vec<(String, LinkSpec)>,
    /// The link the plugin's `master` must name (the VxLAN link if there is one).
    pub master: String,
    /// The host device the links hang off.
    pub device: String,
    /// Whether `master` already names [`AttachmentLinks::master`].
    pub rewritten: bool,
}

/// The links `config` (the object's `spec.config`) asks for; `written`: its annotations.
/// `None`: it asks for no link (no plugin has a non-zero `vlan` or `vxlan`).
pub fn links(config: &str, written: Written<'_>) -> Result<Option<AttachmentLinks>, LinkProblem> {
    let root: Value =
        serde_json::from_str(config).map_err(|e| bad(format!("spec.config is not JSON: {e}")))?;
    let Some(at) = asking_plugin(&root)? else {
        return Ok(None);
    };
    let plugin = plugin(&root, at);
    let name = root.get("name").and_then(Value::as_str).unwrap_or_default();
    crate::names::plain(name).map_err(|e| bad(format!("spec.config name {e}")))?;
    let id = |key: &str| -> Result<Option<i64>, LinkProblem> {
        match plugin.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                bad(format!(
                    "spec.config {}{key} is {v}, not an integer",
                    field(at)
                ))
            }),
        }
    };
    let (vlan, vxlan) = (id("vlan")?, id("vxlan")?);
    let master = plugin
        .get("master")
        .and_then(Value::as_str)
        .unwrap_or_default();
    device_name(master, &format!("spec.config {}master", field(at)))?;
    // The link names do not depend on the device.
    let field_prefix = format!("spec.config {}", field(at));
    let names: Vec<String> = links_of(name, master, vlan, vxlan, &field_prefix)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let rewritten = written.rewritten == Some(master) || names.iter().any(|n| n == master);
    let device = if rewritten {
        let original = written.original.ok_or_else(|| {
            bad(format!(
                "spec.config {}master names the link {master}, and the annotation {ORIGINAL_MASTER} that keeps its host device is missing",
                field(at)
            ))
        })?;
        device_name(original, &format!("annotation {ORIGINAL_MASTER}"))?;
        original
    } else {
        master
    };
    let links = links_of(name, device, vlan, vxlan, &field_prefix)?;
    let wanted = links
        .iter()
        .find(|(_, s)| matches!(s, LinkSpec::Vxlan { .. }))
        .unwrap_or(&links[0])
        .0
        .clone();
    Ok(Some(AttachmentLinks {
        rewritten: master == wanted,
        master: wanted,
        device: device.to_owned(),
        links,
    }))
}

/// `config` with the `master` of the plugin that asks for a link set to `link`.
pub fn rewrite(config: &str, link: &str) -> Result<String, LinkProblem> {
    let mut root: Value =
        serde_json::from_str(config).map_err(|e| bad(format!("spec.config is not JSON: {e}")))?;
    let Some(at) = asking_plugin(&root)? else {
        return Err(bad("spec.config asks for no host link".into()));
    };
    let plugin = match at {
        None => Some(&mut root),
        Some(i) => root.get_mut("plugins").and_then(|p| p.get_mut(i)),
    };
    match plugin.and_then(Value::as_object_mut) {
        Some(p) => {
            p.insert("master".into(), Value::String(link.to_owned()));
        }
        None => return Err(bad("spec.config changed while read".into())),
    }
    serde_json::to_string(&root).map_err(|e| bad(e.to_string()))
}

/// Which plugin asks for a link: `Some(None)` the configuration itself (a single plugin),
/// `Some(Some(i))` the i-th of its `plugins`; `None` when none does.
fn asking_plugin(root: &Value) -> Result<Option<Option<usize>>, LinkProblem> {
    if !root.is_object() {
        return Err(bad("spec.config is not a JSON object".into()));
    }
    let asks = |p: &Value| {
        ["vlan", "vxlan"].iter().any(|k| {
            p.get(*k)
                .is_some_and(|v| !v.is_null() && v.as_i64() != Some(0))
        })
    };
    let Some(plugins) = root.get("plugins") else {
        return Ok(asks(root).then_some(None));
    };
    let plugins = plugins
        .as_array()
        .ok_or_else(|| bad("spec.config plugins is not a list".into()))?;
    let asking: Vec<usize> = (0..plugins.len()).filter(|i| asks(&plugins[*i])).collect();
    match asking.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(Some(*one))),
        many => Err(bad(format!(
            "spec.config plugins {many:?} each ask for a host link: only one may"
        ))),
    }
}

fn plugin(root: &Value, at: Option<usize>) -> &Value {
    match at {
        None => root,
        Some(i) => &root["plugins"][i],
    }
}

/// How errors name the plugin's keys: `plugins[2].` in a list, nothing for a single plugin.
fn field(at: Option<usize>) -> String {
    at.map(|i| format!("plugins[{i}].")).unwrap_or_default()
}

/// A host device named by an object: a plain name no longer than the kernel takes.
fn device_name(name: &str, what: &str) -> Result<(), LinkProblem> {
    if name.is_empty() {
        return Err(bad(format!(
            "{what} is missing: it names the host device of the link"
        )));
    }
    crate::names::plain(name).map_err(|e| bad(format!("{what} {e}")))?;
    if name.len() > MAX_NAME {
        return Err(bad(format!(
            "{what} {name:?} is longer than {MAX_NAME} characters: no device has that name"
        )));
    }
    Ok(())
}

fn bad(why: String) -> LinkProblem {
    LinkProblem::BadAttachment(why)
}

#[cfg(test)]
mod tests;
