//! `etcdsync plugins`: lists the registry.

use etcdsync_core::registry;
use std::fmt::Write as _;

pub fn render(with_examples: bool) -> String {
    let mut out = String::new();
    let plugins = registry::plugins();
    let width = plugins.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for plugin in plugins {
        let _ = writeln!(
            out,
            "{:<9}  {:<width$}  {}",
            plugin.kind.to_string(),
            plugin.name,
            plugin.summary
        );
        if with_examples {
            for line in plugin.example.lines() {
                let _ = writeln!(out, "      {line}");
            }
            out.push('\n');
        }
    }
    out
}
