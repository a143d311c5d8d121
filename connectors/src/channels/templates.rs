//! Message templates (`schemas/templates/<id>.yaml`, see its README) and merge fields.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;
use touchpoint_schemas::ChannelMessage;

/// One template's parts, unrendered.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
}

/// The parts of a message ready to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_id: HashMap<String, Template>,
}

impl Templates {
    /// Every `*.yaml` of `dir`; a file that does not parse is refused with its name and line.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let mut by_id = HashMap::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading templates from {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let template: Template = serde_yaml::from_str(&text).map_err(|e| {
                let at = e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default();
                anyhow::anyhow!("{}{at}: {e}", path.display())
            })?;
            by_id.insert(id, template);
        }
        Ok(Templates { by_id })
    }

    pub fn insert(&mut self, id: impl Into<String>, template: Template) {
        self.by_id.insert(id.into(), template);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The message's template rendered with its merge fields, or its raw content when it names no
    /// template.
    pub fn render(&self, m: &ChannelMessage) -> Result<Rendered, RenderError> {
        let Some(id) = m.template.as_deref() else {
            let raw = |k: &str| m.data.get(k).and_then(Value::as_str).map(str::to_string);
            return Ok(Rendered {
                subject: raw("subject"),
                text: raw("text"),
                html: raw("html"),
                title: raw("title"),
                body: raw("body"),
            });
        };
        // A typo in a journey or rule must not send raw data: an unknown template is a permanent error.
        let t = self.by_id.get(id).ok_or_else(|| RenderError::UnknownTemplate(id.to_string()))?;
        let part = |p: &Option<String>, html: bool| -> Result<Option<String>, RenderError> {
            p.as_deref()
                .map(|s| {
                    render(s, m, html)
                        .map_err(|MissingField(field)| RenderError::MissingField { template: id.to_string(), field })
                })
                .transpose()
        };
        Ok(Rendered {
            subject: part(&t.subject, false)?,
            text: part(&t.text, false)?,
            html: part(&t.html, true)?,
            title: part(&t.title, false)?,
            body: part(&t.body, false)?,
        })
    }
}

/// Why a message cannot be rendered: a permanent error (a typo in a journey or rule must not send raw
/// data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("unknown template {0:?} (no {0}.yaml in the templates)")]
    UnknownTemplate(String),
    #[error("template {template}: merge field `{field}` missing")]
    MissingField { template: String, field: String },
}

/// A merge field absent from the message, without fallback: its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("merge field `{0}` missing")]
pub struct MissingField(pub String);

/// Fills `{{ path }}` and `{{ path | "fallback" }}`. Text that is not a well-formed placeholder is kept
/// as it is.
pub fn render(text: &str, m: &ChannelMessage, escape_html: bool) -> Result<String, MissingField> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let inner = after[..close].trim();
        let (path, fallback) = match inner.split_once('|') {
            Some((p, f)) => (p.trim(), Some(f.trim().trim_matches('"').to_string())),
            None => (inner, None),
        };
        let value = match m.field(path) {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => fallback.ok_or_else(|| MissingField(path.to_string()))?,
        };
        if escape_html {
            out.push_str(&html_escape(&value));
        } else {
            out.push_str(&value);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn message(template: Option<&str>, data: Value) -> ChannelMessage {
        ChannelMessage {
            idempotency_key: "key-1".into(),
            channel: touchpoint_schemas::Channel::Email,
            tenant_id: "acme".into(),
            subject_id: "u1".into(),
            recipient: Some("u1@example.com".into()),
            template: template.map(str::to_string),
            data,
            metadata: [("campaign".to_string(), "spring".to_string())].into(),
            category: "onboarding".into(),
            purpose: touchpoint_schemas::Purpose::Marketing,
            priority: 0,
            event_id: "e1".into(),
            event_type: "signed_up".into(),
            occurred_at: 0,
            rule_id: "r".into(),
            intents_version: "v".into(),
            caps_version: "c".into(),
            journey: None,
        }
    }

    #[test]
    fn merge_fields_fallbacks_and_escaping() {
        let m = message(None, serde_json::json!({"first_name": "Ada <3", "n": 3}));
        assert_eq!(render("Hi {{ first_name }}!", &m, false).unwrap(), "Hi Ada <3!");
        assert_eq!(render("Hi {{first_name}}!", &m, true).unwrap(), "Hi Ada &lt;3!");
        assert_eq!(render("{{ n }} items for {{ recipient }}", &m, false).unwrap(), "3 items for u1@example.com");
        assert_eq!(render("{{ last_name | \"there\" }}", &m, false).unwrap(), "there");
        assert_eq!(render("{{ metadata.campaign }}", &m, false).unwrap(), "spring");
        assert_eq!(render("{{ last_name }}", &m, false), Err(MissingField("last_name".to_string())));
        assert_eq!(render("unclosed {{ x", &m, false).unwrap(), "unclosed {{ x");
    }

    #[test]
    fn a_template_renders_every_part_or_names_the_missing_field() {
        let mut t = Templates::default();
        t.insert(
            "welcome",
            Template {
                subject: Some("Hi {{ first_name }}".into()),
                html: Some("<p>{{ plan }}</p>".into()),
                ..Default::default()
            },
        );
        let ok = t.render(&message(Some("welcome"), serde_json::json!({"first_name": "Ada", "plan": "pro"}))).unwrap();
        assert_eq!(ok.subject.as_deref(), Some("Hi Ada"));
        assert_eq!(ok.html.as_deref(), Some("<p>pro</p>"));
        assert_eq!(ok.text, None);
        let missing = t.render(&message(Some("welcome"), serde_json::json!({"first_name": "Ada"}))).unwrap_err();
        assert_eq!(missing.to_string(), "template welcome: merge field `plan` missing");
    }

    #[test]
    fn without_a_template_the_raw_content_is_sent_and_an_unknown_one_is_refused() {
        let t = Templates::default();
        let r = t.render(&message(None, serde_json::json!({"subject": "S", "text": "T"}))).unwrap();
        assert_eq!((r.subject.as_deref(), r.text.as_deref(), r.html), (Some("S"), Some("T"), None));
        let unknown = t.render(&message(Some("nope"), serde_json::json!({"subject": "S"}))).unwrap_err();
        assert!(unknown.to_string().starts_with("unknown template \"nope\""), "{unknown}");
    }

    #[test]
    fn the_shipped_templates_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/templates");
        let t = Templates::load_dir(&dir).unwrap();
        assert!(t.len() >= 7, "{}", t.len());
    }
}
