//! The plugin registry: every source, sink and transform submits a [`PluginInfo`] with
//! `inventory`, which `etcdsync plugins` lists. YAML selection itself goes through `typetag`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PluginKind {
    Source,
    Transform,
    Sink,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Source => "source",
            PluginKind::Transform => "transform",
            PluginKind::Sink => "sink",
        })
    }
}

/// A plugin's description, submitted beside its config type:
/// `inventory::submit!(PluginInfo { kind: PluginKind::Sink, name: "etcd", … })`.
#[derive(Debug)]
pub struct PluginInfo {
    pub kind: PluginKind,
    /// The `type:` name in YAML; must equal the `typetag` name.
    pub name: &'static str,
    /// One line for `etcdsync plugins`.
    pub summary: &'static str,
    /// A YAML example of the plugin's config section (with its `type:` line); tests parse it.
    pub example: &'static str,
}

inventory::collect!(PluginInfo);

/// Every registered plugin, sorted by kind then name.
pub fn plugins() -> Vec<&'static PluginInfo> {
    let mut all: Vec<_> = inventory::iter::<PluginInfo>.into_iter().collect();
    all.sort_by_key(|p| (p.kind, p.name));
    all
}

/// The plugin of this kind and name, if linked in.
pub fn find(kind: PluginKind, name: &str) -> Option<&'static PluginInfo> {
    inventory::iter::<PluginInfo>
        .into_iter()
        .find(|p| p.kind == kind && p.name == name)
}
