//! Templates over a row: `{column}`, `{schema}`, `{table}`, literal text, `{{` / `}}` for braces.
//! Parsed once at build; rendering looks columns up by index per table schema.

use etcdsync_core::change::TableSchema;
use etcdsync_core::{Error, Result, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Schema,
    Table,
    Column(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub text: String,
    pub parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed `{{{name}` in `{text}`")),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("empty `{{}}` in `{text}`; name a column"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(match name.as_str() {
                        "schema" => Part::Schema,
                        "table" => Part::Table,
                        _ => Part::Column(name),
                    });
                }
                '}' => {
                    return Err(format!(
                        "stray `}}` in `{text}`; write `}}}}` for a literal brace"
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Checks that every column the template names exists in the table.
    pub fn check_columns(&self, schema: &TableSchema) -> Result<()> {
        for column in self.columns() {
            if schema.column_index(column).is_none() {
                return Err(Error::config(format!(
                    "template `{}` names column `{column}`, which table {} does not have (columns: {})",
                    self.text,
                    schema.id,
                    schema.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Renders with each value passed through `render_value`. `None` when a needed column is
    /// `Missing` or `Unchanged` in `row` (the source did not send it).
    pub fn render(
        &self,
        schema: &TableSchema,
        row: &[Value],
        render_value: &dyn Fn(&Value) -> String,
        escape_names: &dyn Fn(&str) -> String,
    ) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Schema => out.push_str(&escape_names(&schema.id.schema)),
                Part::Table => out.push_str(&escape_names(&schema.id.table)),
                Part::Column(name) => {
                    let value = schema.column_index(name).and_then(|i| row.get(i))?;
                    if matches!(value, Value::Missing | Value::Unchanged) {
                        return None;
                    }
                    out.push_str(&render_value(value));
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_placeholders_and_escaped_braces() {
        let t = Template::parse("/config/{service}/{{x}}/{table}").expect("parse");
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("/config/".into()),
                Part::Column("service".into()),
                Part::Literal("/{x}/".into()),
                Part::Table,
            ]
        );
        assert!(Template::parse("{open").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{}").is_err());
    }
}
